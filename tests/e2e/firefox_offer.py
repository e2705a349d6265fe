#!/usr/bin/env python3
"""Prints the SDP offer real Firefox (Debian's firefox-esr, headless, driven
over Marionette) makes for an audio call with a fake microphone, for the SDP
fixtures: python3 firefox_offer.py > ../fixtures/sdp/firefox-offer.sdp"""
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from marionette_driver.marionette import Marionette

PORT = 2828


def main():
    profile = tempfile.mkdtemp(prefix="gw-firefox-")
    with open(f"{profile}/user.js", "w") as prefs:
        for line in [
            'user_pref("media.navigator.streams.fake", true);',
            'user_pref("media.navigator.permission.disabled", true);',
            f'user_pref("marionette.port", {PORT});',
            'user_pref("browser.shell.checkDefaultBrowser", false);',
            'user_pref("datareporting.policy.dataSubmissionEnabled", false);',
            'user_pref("app.update.enabled", false);',
        ]:
            prefs.write(line + "\n")
    server = http.server.HTTPServer(("127.0.0.1", 0), BlankPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    firefox = subprocess.Popen(
        ["firefox-esr", "--headless", "--marionette", "--no-remote", "--profile", profile],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = None
        for _ in range(60):
            try:
                client = Marionette(host="127.0.0.1", port=PORT)
                client.start_session()
                break
            except Exception:
                client = None
                time.sleep(0.5)
        if client is None:
            sys.exit("firefox did not start")
        client.navigate(f"http://127.0.0.1:{server.server_address[1]}/")
        client.timeout.script = 20
        sdp = client.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            (async () => {
              const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
              const pc = new RTCPeerConnection();
              stream.getTracks().forEach((t) => pc.addTrack(t, stream));
              const offer = await pc.createOffer();
              await pc.setLocalDescription(offer);
              await new Promise((r) => {
                if (pc.iceGatheringState === 'complete') return r();
                pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r();
                setTimeout(r, 3000);
              });
              done(pc.localDescription.sdp);
            })().catch((e) => done('ERROR ' + e));
            """
        )
        if sdp.startswith("ERROR"):
            sys.exit(sdp)
        sys.stdout.write(sdp)
        client.delete_session()
    finally:
        firefox.terminate()
        firefox.wait(timeout=10)
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)


class BlankPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.end_headers()
        self.wfile.write(b"<!doctype html><title>test</title>")

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    main()
