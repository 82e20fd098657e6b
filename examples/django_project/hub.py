from wshub import create_hub

hub = create_hub()  # WS_* environment / .env
