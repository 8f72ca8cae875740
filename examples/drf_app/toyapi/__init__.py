"""The toy model API's Django project (see ``../manage.py``)."""
