from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    name = "workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from flowmend import broker

        broker.configure()
        from workflows import actors  # noqa: F401  (registers the actors)
