from django.urls import path

from bench.django_site import views

urlpatterns = [path("", views.users)]
