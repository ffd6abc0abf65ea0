#!/usr/bin/env python3
"""A headless stand-in for a person at a browser, for login tests.

    browser.py URL [--stop-prefix PREFIX] [--print-cookie NAME]

Keeps cookies (sending `Secure` ones to loopback, as browsers do), follows redirects one by one, submits the first form on a
page (oidc-provider's device confirm page, form_post pages), and stops at a
page without a form, or as soon as the next URL starts with PREFIX (without
requesting it). Prints the last URL on stdout and, on a final page, its
status and a short excerpt on stderr. Exit status 0 unless a request fails.

With --print-cookie, a second stdout line holds that cookie's value (or
is empty): how tests pick up the web view's session cookie.

Used as $BROWSER for `pam login` (it ends by loading the CLI's loopback
callback, as a browser would) and by tests that take the final redirect
themselves.
"""
import html
import http.cookiejar
import re
import sys
import urllib.error
import urllib.parse
import urllib.request


class LoopbackIsSecure(http.cookiejar.DefaultCookiePolicy):
    """Sends `Secure` cookies to http://127.0.0.1 and localhost, as real
    browsers do (loopback is a potentially trustworthy origin)."""

    def return_ok_secure(self, cookie, request):
        host = urllib.parse.urlsplit(request.get_full_url()).hostname
        if host in ("127.0.0.1", "localhost", "::1"):
            return True
        return super().return_ok_secure(cookie, request)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def main(argv):
    url = argv[1]
    stop = None
    if "--stop-prefix" in argv:
        stop = argv[argv.index("--stop-prefix") + 1]
    cookie = argv[argv.index("--print-cookie") + 1] if "--print-cookie" in argv else None
    jar = http.cookiejar.CookieJar(LoopbackIsSecure())

    def done(last):
        print(last)
        if cookie is not None:
            print(next((c.value for c in jar if c.name == cookie), ""))
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)
    data = None
    for _ in range(30):
        if stop and url.startswith(stop):
            done(url)
            return 0
        body_bytes = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(url, data=body_bytes, headers={"User-Agent": "pam-test-browser"})
        try:
            response = opener.open(request, timeout=15)
            status, headers, body = response.status, response.headers, response.read()
        except urllib.error.HTTPError as e:
            status, headers, body = e.code, e.headers, e.read()
        except urllib.error.URLError as e:
            print(url)
            print(f"request failed: {e.reason}", file=sys.stderr)
            return 1
        data = None
        text = body.decode(errors="replace")
        location = headers.get("Location")
        if status in (301, 302, 303, 307, 308) and location:
            url = urllib.parse.urljoin(url, location)
            continue
        form = re.search(r"<form[^>]*action=\"([^\"]*)\"[^>]*>(.*?)</form>", text, re.S | re.I)
        if status == 200 and form:
            fields = dict(re.findall(r"<input[^>]*?name=\"([^\"]+)\"[^>]*?value=\"([^\"]*)\"", form.group(2)))
            data = {k: html.unescape(v) for k, v in fields.items()}
            url = urllib.parse.urljoin(url, html.unescape(form.group(1)))
            continue
        done(url)
        excerpt = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).strip()[:300]
        print(f"final page: HTTP {status}: {excerpt}", file=sys.stderr)
        return 0
    print("too many redirects", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
