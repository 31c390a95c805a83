"""`medseg serve`: the same core behind a FastAPI server, and the torch-free client that talks to it.

``app`` (server side: sessions per uploaded image, warm models, a fair queue per device, bearer token) imports
torch only when a job runs; ``client`` never does.
"""
