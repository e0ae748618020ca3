"""Websocket routes; ``flowmend.asgi`` wraps them in origin and session checks."""

from django.urls import path

from monitoring import consumers

websocket_urlpatterns = [
    path("ws/runs/<uuid:run_id>/", consumers.RunConsumer.as_asgi()),
    path("ws/dashboard/", consumers.DashboardConsumer.as_asgi()),
]
