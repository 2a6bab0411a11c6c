from rest_framework.exceptions import ParseError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import JSONParser


class SafeJSONParser(JSONParser):
    """DRF's JSON parser, with absurdly deep nesting answered 400 instead of a crash (500)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the document is nested too deeply.") from None


class StrictContentNegotiation(DefaultContentNegotiation):
    """A body is parsed only when its Content-Type names a type we parse.

    DRF matches media types both ways round, so a body sent as `*/*` or `application/*` (what a
    client that does not know what it sends may say) would be read as JSON. Those, and a body
    without a Content-Type, get 415 here. An empty body needs none.
    """

    def select_parser(self, request, parsers):
        media_type = request.content_type.split(";", 1)[0].strip()
        if not media_type or "*" in media_type:
            return None  # DRF answers 415
        return super().select_parser(request, parsers)
