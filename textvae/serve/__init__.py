"""``textvae serve``: a latent-space explorer in the browser.

``Explorer`` (explorer.py) holds a loaded model, the map of its training
sentences (latent_map.py) and its diagnostics (diagnostics.py);
``create_app`` (app.py) puts the JSON API and the page (static/index.html)
in front of it. FastAPI is imported only by app.py, so the rest of textvae
never needs it.
"""

from .explorer import Explorer, Limits, MapSettings, RequestError

__all__ = ["Explorer", "Limits", "MapSettings", "RequestError"]
