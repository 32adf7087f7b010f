"""Reports: collect run directories, summarize them, draw the figures, write report.md."""
