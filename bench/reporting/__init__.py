"""Records to citable files: statistics over seeds, tables (Markdown, CSV, LaTeX), plots and the systems table."""
