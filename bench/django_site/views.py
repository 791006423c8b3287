"""One view that uses the ORM: the first ten users as JSON (a query on sqlite per request)."""

from django.contrib.auth.models import User
from django.http import JsonResponse


def users(request):
    rows = list(User.objects.order_by("id").values("id", "username", "email")[:10])
    return JsonResponse({"users": rows})
