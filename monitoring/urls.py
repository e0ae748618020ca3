from django.contrib.auth import views as auth_views
from django.urls import path

from monitoring import views

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", views.overview, name="overview"),
    path("runs/", views.run_list, name="run-list"),
    path("runs/bulk/", views.run_bulk, name="run-bulk"),
    path("runs/<str:run_id>/", views.run_detail, name="run-detail"),
    path("runs/<str:run_id>/steps/", views.step_action, name="run-step-action"),
    path("runs/<str:run_id>/state/", views.run_state, name="run-state"),
    path(
        "runs/<str:run_id>/resume-from/<str:step>/",
        views.run_resume_from,
        name="run-resume-from",
    ),
    path("runs/<str:run_id>/recovery/<str:action>/", views.run_recovery, name="run-recovery"),
    path("runs/<str:run_id>/<str:action>/", views.run_action, name="run-action"),
    path("interventions/", views.intervention_list, name="intervention-list"),
    path("interventions/<int:pk>/", views.intervention_detail, name="intervention-detail"),
    path("interventions/<int:pk>/decide/", views.intervention_decide, name="intervention-decide"),
    path("errors/", views.error_groups, name="error-list"),
    path("workflows/", views.workflow_list, name="workflow-list"),
    path("workflows/<str:name>/", views.workflow_detail, name="workflow-detail"),
    path("workflows/<str:name>/start/", views.workflow_start, name="workflow-start"),
]
