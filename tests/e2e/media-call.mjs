// Real Chromium on a media path through the gateway's web leg, for
// tests/browser_media.rs: prints {"offer"}, reads {"answer"}, plays what
// comes back, and reports {"connected", "packetsSent", "packetsReceived"}
// (or {"error"}) once audio flowed both ways or the wait ran out.
import { launch, blankPage, lineReader, say } from './chromium.mjs';

const nextLine = lineReader();

const { context, close } = await launch({ audioFile: process.env.FAKE_AUDIO });
try {
  const { page, stop } = await blankPage(context);
  const offer = await page.evaluate(async () => {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    const pc = new RTCPeerConnection();
    window.pc = pc;
    stream.getTracks().forEach((t) => pc.addTrack(t, stream));
    pc.ontrack = (e) => {
      // Chrome decodes remote audio only when it is rendered.
      const audio = document.createElement('audio');
      audio.srcObject = e.streams[0] || new MediaStream([e.track]);
      audio.autoplay = true;
      document.body.appendChild(audio);
    };
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    return offer.sdp;
  });
  say({ offer });
  const { answer } = JSON.parse(await nextLine());
  try {
    const report = await page.evaluate(async (sdp) => {
      const pc = window.pc;
      await pc.setRemoteDescription({ type: 'answer', sdp });
      const deadline = Date.now() + 20000;
      let sent = 0, received = 0, energy = 0;
      while (Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 250));
        const stats = await pc.getStats();
        stats.forEach((s) => {
          if (s.type === 'outbound-rtp' && s.kind === 'audio') sent = s.packetsSent;
          if (s.type === 'inbound-rtp' && s.kind === 'audio') {
            received = s.packetsReceived;
            energy = s.totalAudioEnergy || 0;
          }
        });
        if (sent > 50 && received > 50) break;
        if (pc.connectionState === 'failed') break;
      }
      return { connected: pc.connectionState, packetsSent: sent, packetsReceived: received, totalAudioEnergy: energy };
    }, answer);
    say(report);
  } catch (e) {
    say({ error: String(e && e.message ? e.message : e) });
  }
  await stop();
} finally {
  await close();
}
process.exit(0);
