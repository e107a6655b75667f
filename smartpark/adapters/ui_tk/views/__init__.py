"""The booth's Tk views: widgets only (no business rules, no SQL); they call the controller through the shell."""
