"""One self-contained HTML page per probe store: :mod:`.words` (plain words), :mod:`.markup` (HTML
pieces), :mod:`.page` (figures and the page) (the ``grokscope report`` command is :mod:`grokscope.cli.report`).

Per run: its settings, the onset table, the LC phase table, the lead/lag table, the figures and a short
plain-words summary. Every number comes from :func:`grokscope.analysis.run_summary`; images are embedded
as base64 ``data:`` URIs and the CSS is inline, so the page opens anywhere (no scripts, no network).
"""

from __future__ import annotations

from .markup import (CSS, img_html, lead_lag_table_html, migration_table_html, missing_reason, note_html,
                     onset_table_html, phase_table_html, settings_html, settings_line)
from .page import (PLOT_THRESHOLDS, figures, figures_html, load_runs, region_html, region_steps, render_html,
                   run_section, summaries, write_report)
from .words import (EVENT_WORDS, PHASE_COLUMNS, PHASE_FLAGS, SPLIT_WORDS, describe_change, describe_run,
                    fmt_num, fmt_step, order_words)

__all__ = ["CSS", "EVENT_WORDS", "PHASE_COLUMNS", "PHASE_FLAGS", "PLOT_THRESHOLDS", "SPLIT_WORDS", "describe_change",
           "describe_run", "figures", "figures_html", "fmt_num", "fmt_step", "img_html", "lead_lag_table_html",
           "load_runs", "migration_table_html", "missing_reason", "note_html", "onset_table_html", "order_words",
           "phase_table_html", "region_html", "region_steps", "render_html", "run_section", "settings_html",
           "settings_line", "summaries", "write_report"]
