"""The toy model server's Django project (see ``../manage.py``)."""
