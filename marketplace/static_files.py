"""WhiteNoise as a middleware that also runs on the event loop.

WhiteNoise 6's middleware is synchronous only: under ASGI Django would hop to a thread
for it, and back, on every request, static or not. This subclass keeps WhiteNoise's
lookup and headers and, on the event loop, passes a request that is not a static file
straight on, and streams a static file's bytes from a thread in 64 KiB reads (an
asynchronous iterator, so Django does not read the whole file into memory first).
"""

from __future__ import annotations

import asyncio

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from whitenoise.middleware import WhiteNoiseFileResponse, WhiteNoiseMiddleware

CHUNK_BYTES = 64 * 1024


async def _chunks(file):
    if file is None:  # a 304 or a HEAD: headers only
        return
    while chunk := await asyncio.to_thread(file.read, CHUNK_BYTES):
        yield chunk


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response=None, settings=None):
        if settings is None:
            super().__init__(get_response)
        else:
            super().__init__(get_response, settings)
        self._is_async = iscoroutinefunction(get_response)
        if self._is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self._is_async:
            return self.__acall__(request)
        return super().__call__(request)

    def _static_file(self, request):
        if self.autorefresh:
            return self.find_file(request.path_info)
        return self.files.get(request.path_info)

    async def __acall__(self, request):
        if self.autorefresh:  # looks on disk
            static_file = await asyncio.to_thread(self._static_file, request)
        else:
            static_file = self._static_file(request)
        if static_file is None:
            return await self.get_response(request)
        found = await asyncio.to_thread(static_file.get_response, request.method, request.META)
        response = WhiteNoiseFileResponse((), status=int(found.status))
        del response["content-type"]
        for key, value in found.headers:
            response[key] = value
        response.streaming_content = _chunks(found.file)
        if found.file is not None:
            response._resource_closers.append(found.file.close)
        return response
