"""Serving: the FastAPI app (REST), Gradio mounted on it, logins and their throttle."""
