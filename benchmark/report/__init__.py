"""Reports from the run store: tables (Markdown / LaTeX / CSV), the papers' layouts (leaderboard), per-case
tests and cost (stats), figures (seaborn)."""
