from ninja import NinjaAPI

api = NinjaAPI(title="Flowmend", version="1")
