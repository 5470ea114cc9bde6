"""An app with a syntax error, as a bad deploy would have."""

def index(environ, start_response)
    pass
