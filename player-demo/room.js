// tidecast room client: signaling over a WebSocket (protocol in docs/signaling.md), calls
// peer-to-peer between two participants and through the SFU from the third on (the server says
// `mode: sfu`; the page then publishes simulcast to participant `sfu` and receives everyone
// from it, without a reload). `?room=NAME` joins a room; in the development default
// (no rooms.api_secret) the page mints its own token, otherwise it needs `&token=`.
// `window.roomState` exposes what the tests read (participants, per-peer connection state,
// received frame size, selected candidate pair).
'use strict';

const params = new URLSearchParams(location.search);
const room = params.get('room') || 'lobby';
const wsBase = params.get('signal') || `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`;
const httpBase = wsBase.replace(/^ws/, 'http');
const identity = params.get('identity') || sessionStorage.getItem('tidecast-identity')
  || `guest-${Math.random().toString(36).slice(2, 10)}`;
sessionStorage.setItem('tidecast-identity', identity);
const displayName = params.get('name') || identity;
// `&codecs=h264` makes this client declare (and use) only those codecs, as an H.264-only device
// would; `&max_height=360` asks everyone to send it at most that tall
const onlyCodecs = (params.get('codecs') || '').split(',').filter(Boolean).map((c) => c.toUpperCase());
// `&transport=tcp` behaves as behind a firewall that blocks UDP: towards the SFU only TCP
// candidates are used (ICE-TCP to its media port)
const tcpOnly = params.get('transport') === 'tcp';
// `&policy=relay` sends everything through the TURN server the room hands out
// (RTCConfiguration.iceTransportPolicy), as clients on hostile networks do
const iceTransportPolicy = params.get('policy') === 'relay' ? 'relay' : 'all';
const onlyTcp = (sdp) => (tcpOnly ? sdp.split('\r\n').filter((l) => !/^a=candidate:\S+ \d+ udp /i.test(l)).join('\r\n') : sdp);

const state = {
  room, identity, joined: false, session: null, mode: null, you: null, recording: false, canRecord: false,
  participants: {}, peers: {}, pinned: null, errors: [], iceServers: [], constraints: {},
  sfu: null,
};
window.roomState = state;
let ws = null;
let local = null;
let leaving = false;
let droppedAt = null;
// the node said `draining`: when the socket closes, join again as a new session
let rejoin = false;
// the room lives on another rooms node: its WebSocket URL, and how many redirects we followed
let roomUrl = null;
let redirects = 0;
let redirecting = false;

const $ = (id) => document.getElementById(id);
const status = (text) => { $('status').textContent = text; };
$('room-name').textContent = room;

function send(message) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
}

async function joinToken() {
  if (params.get('token')) return params.get('token');
  const r = await fetch(`${httpBase}/api/rooms/${encodeURIComponent(room)}/tokens`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    // ?record=1: a token that may start and stop the recording (development mode mints any)
    body: JSON.stringify({ identity, name: displayName, record: params.get('record') === '1' }),
  });
  if (!r.ok) throw new Error(`this room needs &token= in the URL (HTTP ${r.status})`);
  return (await r.json()).token;
}

// ---- media ---------------------------------------------------------------------------------

// Layers a subscriber may ask for: the single encoding of a peer-to-peer call is scaled to it.
const LAYERS = {
  high: { scaleResolutionDownBy: 1, maxBitrate: 2_500_000, active: true },
  low: { scaleResolutionDownBy: 4, maxBitrate: 300_000, active: true },
  off: { scaleResolutionDownBy: 4, maxBitrate: 100_000, active: false },
};

// Simulcast towards the SFU: three layers, low → high (the SFU forwards each subscriber one).
const SIMULCAST = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

// What this client can send and receive, declared at join (the room's weaker side decides).
function capabilities() {
  const codecs = (RTCRtpReceiver.getCapabilities('video') || { codecs: [] }).codecs
    .map((c) => c.mimeType.split('/')[1].toUpperCase())
    .filter((c, i, all) => ['VP8', 'H264'].includes(c) && all.indexOf(c) === i)
    .filter((c) => !onlyCodecs.length || onlyCodecs.includes(c));
  const maxHeight = Number(params.get('max_height')) || undefined;
  return { video_codecs: codecs, max_height: maxHeight };
}

// The video codecs a transceiver may use. Peer-to-peer: the room's codec (the weaker side
// decides). Through the SFU: every codec this client handles, the room's first — a negotiated
// media section keeps its payload types (str0m fixes them at the first answer), so a codec
// change mid-call (someone who decodes only another one joins, or leaves) is a switch of the
// sender's codec (useRoomCodec) within what was negotiated, and receivers take any of them.
function applyCodec(p) {
  const all = RTCRtpReceiver.getCapabilities('video').codecs;
  const named = (names) => names.flatMap((n) => all.filter((c) => c.mimeType.toUpperCase() === `VIDEO/${n}`));
  const extra = all.filter((c) => /\/(rtx|red|ulpfec)$/i.test(c.mimeType));
  const roomCodec = state.constraints.video_codec || onlyCodecs[0];
  const handled = onlyCodecs.length ? onlyCodecs : ['VP8', 'H264'];
  for (const t of p.pc.getTransceivers()) {
    if (!t.setCodecPreferences || t.currentDirection === 'stopped' || !t.receiver.track
      || t.receiver.track.kind !== 'video') continue;
    let names = roomCodec ? [roomCodec] : [];
    if (p === state.sfu) names = [...names, ...handled.filter((c) => c !== roomCodec)];
    const main = named(names);
    try { t.setCodecPreferences(main.length ? [...main, ...extra] : []); } catch (e) { /* not for this one */ }
  }
}

// Send the room's codec to the SFU (one of those negotiated; no renegotiation).
async function useRoomCodec() {
  const t = state.sfu && state.sfu.video;
  const want = state.constraints.video_codec;
  if (!t || !want) return;
  const sp = t.sender.getParameters();
  const codec = (sp.codecs || []).find((c) => c.mimeType.toUpperCase() === `VIDEO/${want}`);
  if (!codec || !sp.encodings || !sp.encodings.length) return;
  if (sp.encodings.every((e) => e.codec && e.codec.mimeType === codec.mimeType)) return;
  for (const e of sp.encodings) e.codec = codec;
  try { await t.sender.setParameters(sp); } catch (e) { state.errors.push(`codec: ${e}`); }
}

async function applyLayer(p, layer) {
  p.sentLayer = layer;
  const sender = p.videoSender;
  if (!sender) return;
  const sp = sender.getParameters();
  if (!sp.encodings || !sp.encodings.length) return; // before negotiation: applied after it
  Object.assign(sp.encodings[0], LAYERS[layer] || LAYERS.low);
  // never taller than the weakest receiver asks for
  const track = local.getVideoTracks()[0];
  const height = (track && track.getSettings().height) || 720;
  const cap = state.constraints.max_height;
  if (cap && cap < height) {
    sp.encodings[0].scaleResolutionDownBy = Math.max(sp.encodings[0].scaleResolutionDownBy, height / cap);
  }
  sp.degradationPreference = 'maintain-resolution';
  try { await sender.setParameters(sp); } catch (e) { state.errors.push(`setParameters: ${e}`); }
}

function subscribe(id) {
  const layer = state.pinned === id ? 'high' : 'low';
  const tile = tiles[id];
  const v = tile && tile.video;
  // device pixels: the layer need not be taller than the tile shows
  const px = (n) => (n ? Math.round(n * (window.devicePixelRatio || 1)) : undefined);
  send({ type: 'subscribe', participant: id, layer,
    width: v ? px(v.clientWidth) : undefined, height: v ? px(v.clientHeight) : undefined });
}

function peer(id) {
  let p = state.peers[id];
  if (p) return p;
  const pc = new RTCPeerConnection({ iceServers: state.iceServers, iceTransportPolicy });
  p = state.peers[id] = { pc, queued: [], sentLayer: 'low', connection: 'new', frameHeight: 0,
    framesDecoded: 0, pair: null };
  for (const track of local.getTracks()) {
    const sender = pc.addTrack(track, local);
    if (track.kind === 'video') p.videoSender = sender;
  }
  pc.onicecandidate = (e) => send({ type: 'candidate', to: id, candidate: e.candidate ? e.candidate.toJSON() : null });
  pc.ontrack = (e) => { tile(id).video.srcObject = e.streams[0]; };
  pc.onconnectionstatechange = () => {
    p.connection = pc.connectionState;
    if (pc.connectionState === 'connected') applyLayer(p, p.sentLayer);
    render();
  };
  return p;
}

function closePeer(id) {
  const p = state.peers[id];
  if (p && p.pc && !p.viaSfu) p.pc.close();
  delete state.peers[id];
  if (tiles[id]) { tiles[id].el.remove(); delete tiles[id]; }
  if (state.pinned === id) state.pinned = null;
}

// Forget the call (peers, the SFU connection, the session) but keep the local media.
function resetCall() {
  for (const id of Object.keys(state.peers)) closePeer(id);
  if (state.sfu) { state.sfu.pc.close(); state.sfu = null; }
  state.participants = {};
  state.session = null;
  state.mode = null;
  state.recording = false;
  droppedAt = null;
  render();
}

async function offerTo(id) {
  const p = peer(id);
  applyCodec(p);
  const offer = await p.pc.createOffer();
  await p.pc.setLocalDescription(offer);
  send({ type: 'offer', to: id, sdp: offer.sdp });
}

async function remoteDescription(p, desc) {
  await p.pc.setRemoteDescription(desc);
  for (const c of p.queued.splice(0)) await p.pc.addIceCandidate(c).catch(() => {});
}

// ---- through the SFU ------------------------------------------------------------------------

// The view of a remote participant received through the SFU (same fields as a P2P peer).
function sfuView(id) {
  if (!state.peers[id]) {
    state.peers[id] = { viaSfu: true, connection: state.sfu ? state.sfu.pc.connectionState : 'new',
      frameHeight: 0, framesDecoded: 0, pair: null, codec: null };
  }
  return state.peers[id];
}

async function connectSfu() {
  if (state.sfu) return;
  for (const [id, p] of Object.entries(state.peers)) {
    if (!p.viaSfu) { p.pc.close(); delete state.peers[id]; }
  }
  const pc = new RTCPeerConnection({ iceServers: state.iceServers, iceTransportPolicy,
    bundlePolicy: 'max-bundle' });
  const sfu = state.sfu = { pc, queued: [], owners: {}, connection: 'new' };
  for (const track of local.getTracks()) {
    if (track.kind === 'video') {
      sfu.video = pc.addTransceiver(track, { direction: 'sendonly', streams: [local],
        sendEncodings: SIMULCAST.map((e) => ({ ...e })) });
    } else {
      pc.addTransceiver(track, { direction: 'sendonly', streams: [local] });
    }
  }
  pc.onicecandidate = (e) => {
    if (e.candidate && tcpOnly && / udp /i.test(e.candidate.candidate)) return;
    send({ type: 'candidate', to: 'sfu', candidate: e.candidate ? e.candidate.toJSON() : null });
  };
  pc.ontrack = (e) => {
    const stream = e.streams[0];
    if (!stream) return;
    const owner = stream.id;
    sfu.owners[e.track.id] = owner;
    sfuView(owner);
    const t = tile(owner);
    if (t.video.srcObject !== stream) t.video.srcObject = stream;
    render();
  };
  pc.onconnectionstatechange = () => {
    sfu.connection = pc.connectionState;
    for (const p of Object.values(state.peers)) if (p.viaSfu) p.connection = pc.connectionState;
    render();
  };
  applyCodec(sfu);
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  send({ type: 'offer', to: 'sfu', sdp: onlyTcp(offer.sdp) });
  for (const id of Object.keys(state.participants)) { sfuView(id); subscribe(id); }
}

// ---- signaling -----------------------------------------------------------------------------

const handlers = {
  async joined(m) {
    // a fresh session where we had a call (its node died, the room moved): start it over
    if (!m.resumed && (state.sfu || Object.keys(state.peers).length)) resetCall();
    state.joined = true;
    state.session = m.session;
    state.mode = m.mode;
    state.you = m.you;
    state.iceServers = m.ice_servers || [];
    state.constraints = m.constraints || {};
    droppedAt = null;
    status(m.resumed ? 'reconnected' : `joined as ${m.you.name}`);
    for (const p of m.participants) state.participants[p.id] = p;
    if (m.mode === 'sfu') {
      if (!state.sfu) await connectSfu();
    } else if (!m.resumed) {
      for (const p of m.participants) { await offerTo(p.id); subscribe(p.id); }
    }
    render();
  },
  async mode(m) {
    state.mode = m.mode;
    if (m.mode === 'sfu') await connectSfu();
    render();
  },
  participant_joined(m) {
    state.participants[m.participant.id] = m.participant;
    if (state.sfu) sfuView(m.participant.id);
    subscribe(m.participant.id);
    render();
  },
  async constraints(m) {
    // a newcomer's offer already carries them; through the SFU a new codec means a new offer
    const before = state.constraints.video_codec;
    state.constraints = m.constraints || {};
    for (const p of Object.values(state.peers)) applyLayer(p, p.sentLayer);
    if (state.constraints.video_codec !== before) await useRoomCodec();
  },
  participant_updated(m) { state.participants[m.participant.id] = m.participant; render(); },
  participant_left(m) { delete state.participants[m.id]; closePeer(m.id); render(); },
  async offer(m) {
    if (m.from === 'sfu') {
      if (!state.sfu) return;
      await remoteDescription(state.sfu, { type: 'offer', sdp: onlyTcp(m.sdp) });
      applyCodec(state.sfu);
      const answer = await state.sfu.pc.createAnswer();
      await state.sfu.pc.setLocalDescription(answer);
      send({ type: 'answer', to: 'sfu', sdp: onlyTcp(answer.sdp) });
      return;
    }
    const p = peer(m.from);
    await remoteDescription(p, { type: 'offer', sdp: m.sdp });
    applyCodec(p);
    const answer = await p.pc.createAnswer();
    await p.pc.setLocalDescription(answer);
    send({ type: 'answer', to: m.from, sdp: answer.sdp });
  },
  async answer(m) {
    const p = m.from === 'sfu' ? state.sfu : state.peers[m.from];
    const sdp = m.from === 'sfu' ? onlyTcp(m.sdp) : m.sdp;
    if (p) await remoteDescription(p, { type: 'answer', sdp });
    if (p && p === state.sfu) await useRoomCodec();
  },
  async candidate(m) {
    const p = peer(m.from);
    if (!m.candidate) return;
    if (p.pc.remoteDescription) await p.pc.addIceCandidate(m.candidate).catch(() => {});
    else p.queued.push(m.candidate);
  },
  subscription(m) { if (!state.sfu) applyLayer(peer(m.from), m.layer); },
  // the SFU forwards only these layers of our video: pause the others at the encoder
  async layers(m) {
    const t = state.sfu && state.sfu.video;
    if (!t || t.mid !== m.mid) return;
    const sp = t.sender.getParameters();
    if (!sp.encodings) return;
    for (const e of sp.encodings) e.active = m.active.includes(e.rid);
    try { await t.sender.setParameters(sp); } catch (e) { state.errors.push(`layers: ${e}`); }
  },
  recording(m) {
    state.recording = m.on;
    if (m.can_control !== undefined) state.canRecord = m.can_control;
    $('rec').hidden = !m.on;
    $('record').hidden = !state.canRecord;
    $('record').textContent = m.on ? 'Stop recording' : 'Record';
  },
  active_speaker(m) {
    state.activeSpeaker = m.participant;
    for (const [id, t] of Object.entries(tiles)) t.el.classList.toggle('speaking', id === m.participant);
  },
  pong() {},
  room_ended() { leaving = true; status('the room was ended'); },
  draining() {
    rejoin = true;
    roomUrl = null;
    redirects = 0;
    status('the server is restarting: joining again…');
  },
  redirect(m) { roomUrl = m.url; redirects += 1; redirecting = true; },
  async error(m) {
    state.errors.push(`${m.code}: ${m.message}`);
    if (m.code === 'media_disconnected' && state.sfu) {
      // the SFU lost our connection: make a new one
      state.sfu.pc.close();
      state.sfu = null;
      await connectSfu();
      return;
    }
    status(`error: ${m.code}`);
    if (['room_full', 'kicked', 'replaced'].includes(m.code)) leaving = true;
  },
};

// messages are handled one at a time, in order (offer before its candidates)
let chain = Promise.resolve();

async function connect() {
  const token = await joinToken();
  const url = roomUrl || `${wsBase}/rooms/${encodeURIComponent(room)}/ws`;
  ws = new WebSocket(`${url}?token=${encodeURIComponent(token)}${redirects ? `&redirects=${redirects}` : ''}`);
  ws.onopen = () => send({ type: 'join', name: displayName, session: state.session || undefined,
    caps: capabilities() });
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    const h = handlers[m.type];
    if (h) chain = chain.then(() => h(m)).catch((err) => state.errors.push(String(err)));
  };
  ws.onclose = () => {
    state.joined = false;
    if (leaving) { status('left'); return; }
    if (redirecting) {
      // the room is on another node: go there at once
      redirecting = false;
      connect().catch((e) => status(String(e)));
      return;
    }
    if (rejoin) {
      // the call lived on that node: drop it and join afresh (a load balancer picks a node
      // that is up), after a random pause so a room's participants do not all come at once
      rejoin = false;
      resetCall();
      setTimeout(() => connect().catch((e) => status(String(e))), 300 + Math.random() * 1200);
      return;
    }
    // resume within the server's window: the others do not see us leave
    droppedAt = droppedAt || Date.now();
    if (Date.now() - droppedAt > 14_000) { status('disconnected'); return; }
    // the room's node does not answer: after 3 s ask the entry node again, which sends us to
    // the room's new node (a dead node's rooms move to the next one)
    if (roomUrl && Date.now() - droppedAt > 3_000) { roomUrl = null; redirects = 0; }
    status('reconnecting…');
    setTimeout(() => connect().catch((e) => status(String(e))), 1000);
  };
}

// `&source=clock` publishes a 1280x720 canvas instead of the camera: four horizontal bars show a
// 4-bit counter that advances every 100 ms (bar b white = bit 3-b), and `window.clockFlips` lists
// [value, wall-clock ms] of each advance — bench/g2g_room.mjs reads it back on another page.
function clockSource() {
  const c = document.createElement('canvas');
  c.width = 1280; c.height = 720;
  const ctx = c.getContext('2d');
  window.clockFlips = [];
  let value = 0;
  const paint = () => {
    value = (value + 1) % 16;
    for (let b = 0; b < 4; b++) {
      ctx.fillStyle = (value >> (3 - b)) & 1 ? '#fff' : '#000';
      ctx.fillRect(0, b * 180, 1280, 180);
    }
    window.clockFlips.push([value, performance.timeOrigin + performance.now()]);
    if (window.clockFlips.length > 2000) window.clockFlips.splice(0, 1000);
  };
  paint();
  setInterval(paint, 100);
  return c.captureStream(30);
}

// ---- page ----------------------------------------------------------------------------------

const tiles = {};

function tile(id) {
  if (tiles[id]) return tiles[id];
  const el = document.createElement('div');
  el.className = 'tile';
  el.dataset.id = id;
  const video = document.createElement('video');
  video.autoplay = true;
  video.playsInline = true;
  video.muted = id === 'local';
  const label = document.createElement('span');
  label.className = 'label';
  el.append(video, label);
  if (id !== 'local') {
    el.onclick = () => {
      state.pinned = state.pinned === id ? null : id;
      render(); // the tiles take their new size first: subscriptions carry it
      for (const other of Object.keys(state.peers)) subscribe(other);
    };
  }
  $('grid').append(el);
  tiles[id] = { el, video, label };
  return tiles[id];
}

function render() {
  const you = tile('local');
  you.label.textContent = `${displayName} (you)`;
  for (const [id, p] of Object.entries(state.peers)) {
    const t = tile(id);
    const info = state.participants[id];
    const name = info ? info.name : id;
    const muted = info && (info.audio_muted ? ' 🔇' : '') + (info.video_muted ? ' ⏸' : '');
    t.label.textContent = `${name}${muted || ''} · ${p.connection} · ${p.frameHeight ? p.frameHeight + 'p' : '–'}`;
    t.el.classList.toggle('pinned', state.pinned === id);
  }
  $('people').replaceChildren(...[state.you, ...Object.values(state.participants)].filter(Boolean)
    .map((p) => Object.assign(document.createElement('li'), { textContent: p.name + (p.id === identity ? ' (you)' : '') })));
}

// the selected candidate pair's two ends (relayProtocol: how a relay candidate reaches its TURN
// server, udp / tcp / tls)
function pairView(report, pair) {
  const end = (c) => ({ type: c.candidateType, address: c.address, port: c.port, protocol: c.protocol,
    relayProtocol: c.relayProtocol || null });
  const l = report.get(pair.localCandidateId);
  const r = report.get(pair.remoteCandidateId);
  return l && r ? { local: end(l), remote: end(r) } : null;
}

async function sfuStats() {
  const sfu = state.sfu;
  const report = await sfu.pc.getStats();
  let pair = null;
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      const owner = sfu.owners[s.trackIdentifier];
      const p = owner && state.peers[owner];
      if (!p) return;
      p.frameHeight = s.frameHeight || 0;
      p.framesDecoded = s.framesDecoded || 0;
      const codec = s.codecId && report.get(s.codecId);
      p.codec = codec ? codec.mimeType : null;
    }
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
  });
  if (pair) {
    const view = pairView(report, pair);
    sfu.pair = view;
    for (const p of Object.values(state.peers)) if (p.viaSfu) p.pair = view;
  }
}

async function stats() {
  if (state.sfu) await sfuStats();
  for (const p of Object.values(state.peers)) {
    if (p.viaSfu) continue;
    const report = await p.pc.getStats();
    let pairId = null;
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') {
        p.frameHeight = s.frameHeight || 0;
        p.framesDecoded = s.framesDecoded || 0;
        const codec = s.codecId && report.get(s.codecId);
        p.codec = codec ? codec.mimeType : null;
      }
      if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
    });
    const pair = pairId && report.get(pairId);
    if (pair) p.pair = pairView(report, pair);
  }
  render();
}

function toggle(kind, button, on, off) {
  const track = local && local.getTracks().find((t) => t.kind === kind);
  if (!track) return;
  track.enabled = !track.enabled;
  button.textContent = track.enabled ? on : off;
  send({ type: 'mute', kind, muted: !track.enabled });
}

$('mute-audio').onclick = (e) => toggle('audio', e.target, 'Mute mic', 'Unmute mic');
$('mute-video').onclick = (e) => toggle('video', e.target, 'Stop camera', 'Start camera');
$('record').onclick = () => send({ type: 'record', on: !state.recording });
$('leave').onclick = () => {
  leaving = true;
  send({ type: 'leave' });
  for (const id of Object.keys(state.peers)) closePeer(id);
  if (state.sfu) { state.sfu.pc.close(); state.sfu = null; }
  if (ws) ws.close();
};

(async () => {
  try {
    local = params.get('source') === 'clock' ? clockSource()
      : await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 1280, height: 720 } });
    tile('local').video.srcObject = local;
    await connect();
    setInterval(() => stats().catch(() => {}), 1000);
    setInterval(() => send({ type: 'ping' }), 20_000);
  } catch (e) {
    state.errors.push(String(e));
    status(String(e));
  }
})();
