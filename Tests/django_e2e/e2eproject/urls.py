from django.urls import path

from . import views

urlpatterns = [
    path("login/", views.login_view),
    path("logout/", views.logout_view),
    path("store/", views.store_view),
    path("cycle/", views.cycle_view),
    path("expiry/", views.expiry_view),
    path("whoami/", views.whoami_view),
]
