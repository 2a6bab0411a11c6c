from rest_framework.views import APIView

from keys.authentication import count_auth_failure


class GatewayAPIView(APIView):
    """Base of every keyed endpoint.

    DRF checks permissions before throttles; we count first, so that every authenticated
    request (a 403 included) is counted against its key and answers with RateLimit-* headers.
    """

    def initial(self, request, *args, **kwargs):
        self.format_kwarg = self.get_format_suffix(**kwargs)
        request.accepted_renderer, request.accepted_media_type = self.perform_content_negotiation(
            request
        )
        request.version, request.versioning_scheme = self.determine_version(
            request, *args, **kwargs
        )
        self.perform_authentication(request)
        if request.user is None:
            # No credentials at all: counted like a wrong key, so probing is slowed too.
            count_auth_failure(request)
        self.check_throttles(request)
        self.check_permissions(request)
