// Real Chromium against the gateway's SDP, one exchange over stdin/stdout
// (JSON lines), for tests/browser_sdp.rs:
//   answer mode (default): prints {"offer"}, reads {"answer"}, applies it.
//   --offer-from-gateway:  reads {"offer"}, applies it, prints {"answer"}.
// Ends with {"ok": true} or {"error": "..."}.
import { launch, blankPage, lineReader, say } from './chromium.mjs';

const video = process.argv.includes('--video');
const gatewayOffers = process.argv.includes('--offer-from-gateway');
const nextLine = lineReader();

const { context, close } = await launch();
try {
  const { page, stop } = await blankPage(context);
  await page.evaluate(async (video) => {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video });
    window.pc = new RTCPeerConnection();
    stream.getTracks().forEach((t) => window.pc.addTrack(t, stream));
  }, video);
  try {
    if (gatewayOffers) {
      const { offer } = JSON.parse(await nextLine());
      const answer = await page.evaluate(async (sdp) => {
        await window.pc.setRemoteDescription({ type: 'offer', sdp });
        const answer = await window.pc.createAnswer();
        await window.pc.setLocalDescription(answer);
        return answer.sdp;
      }, offer);
      say({ answer });
    } else {
      const offer = await page.evaluate(async () => {
        const offer = await window.pc.createOffer();
        await window.pc.setLocalDescription(offer);
        return offer.sdp;
      });
      say({ offer });
      const { answer } = JSON.parse(await nextLine());
      await page.evaluate((sdp) => window.pc.setRemoteDescription({ type: 'answer', sdp }), answer);
    }
    say({ ok: true });
  } catch (e) {
    say({ error: String(e && e.message ? e.message : e) });
  }
  await stop();
} finally {
  await close();
}
process.exit(0);
