"""Reports from the run store: tables (Markdown / LaTeX / CSV); figures come later."""
