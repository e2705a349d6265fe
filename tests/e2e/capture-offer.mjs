// Prints the SDP offer real Chromium makes for an audio call (fake mic), for
// the SDP fixtures: node capture-offer.mjs [--video] > ../fixtures/sdp/chromium-offer.sdp
import { launch, blankPage } from './chromium.mjs';

const video = process.argv.includes('--video');
const { context, close } = await launch();
try {
  const { page, stop } = await blankPage(context);
  const sdp = await page.evaluate(async (video) => {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video });
    const pc = new RTCPeerConnection();
    stream.getTracks().forEach((t) => pc.addTrack(t, stream));
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    // Wait for host candidates so the fixture has them.
    await new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') return resolve();
      pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
      setTimeout(resolve, 3000);
    });
    return pc.localDescription.sdp;
  }, video);
  process.stdout.write(sdp);
  await stop();
} finally {
  await close();
}
process.exit(0);
