"""The Celery half of docpipe: the app, queue names and thin tasks over ``docpipe`` (pipeline/)."""
