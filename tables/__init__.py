"""Table declarations only (see tables/books.py for the layout)."""
