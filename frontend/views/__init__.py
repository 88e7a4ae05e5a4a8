"""The browser UI's views, one module per area; ``frontend/urls.py`` maps them."""
