"""Reports of run, refine and sweep folders: one typed model (model), how numbers read (format), the
markdown documents (markdown), the HTML shell and its pages (html, run_page, refine_page, sweep_page,
with the robustness and samples sections), the figures (plots) and the writing of a folder (write)."""
