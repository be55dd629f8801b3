// tidecast player demo: lists live streams from /api/streams and plays one with hls.js
// (LL-HLS, or plain HLS with ?format=hls) or dash.js (LL-DASH, ?format=dash). ?src=URL plays any
// HLS/DASH URL instead of a tidecast stream. ?config=stock runs each player with the configuration
// integrators write (dash.js defaults; hls.js {lowLatencyMode: true}, play on MANIFEST_PARSED)
// instead of this page's tuning. window.tidecastPlayer exposes the state for tests.
(function () {
  'use strict';
  const video = document.getElementById('video');
  const list = document.getElementById('streams');
  const status = document.getElementById('status');
  const picker = document.getElementById('rendition');
  const info = document.getElementById('info');
  const formatPicker = document.getElementById('format');
  const state = { hls: null, dash: null, stream: null, errors: [], fatal: null };
  window.tidecastPlayer = state;
  const query = new URLSearchParams(location.search);
  // ll-hls (default), hls (no parts), dash (LL-DASH); ?ll=0 is the old spelling of hls
  let format = query.get('format') || (query.get('ll') === '0' ? 'hls' : 'll-hls');
  formatPicker.value = format;
  const stock = query.get('config') === 'stock';

  function stop() {
    if (state.hls) { state.hls.destroy(); state.hls = null; }
    if (state.dash) { state.dash.reset(); state.dash = null; }
  }

  function playDash(url) {
    const player = dashjs.MediaPlayer().create();
    if (!stock) {
      // dash.js 5 turns low-latency mode on from the MPD (availabilityTimeComplete="false")
      player.updateSettings({
        streaming: {
          delay: { liveDelay: 1.5 },
          liveCatchup: { enabled: true, maxDrift: 2, playbackRate: { min: -0.3, max: 0.3 } },
        },
      });
    }
    player.on(dashjs.MediaPlayer.events.ERROR, function (e) {
      const err = e && e.error ? (e.error.message || e.error.code) : String(e);
      state.errors.push('dash:' + err);
      state.fatal = String(err);
    });
    player.on(dashjs.MediaPlayer.events.QUALITY_CHANGE_RENDERED, function (e) {
      if (e.mediaType === 'video') info.textContent = 'playing quality ' + e.newQuality;
    });
    player.initialize(video, url, true);
    state.dash = player;
    picker.innerHTML = '<option value="-1">Auto</option>';
  }

  // LL-HLS: start playing once a part's worth of media (0.6 s) is buffered ahead of the start
  // position, not as soon as the manifest is parsed. Starting at once can leave the playhead a
  // few frames before the end of the first part loaded; the next part then arrives too late,
  // playback stalls, and hls.js adds a second to its target latency for the rest of the session.
  // A buffered range that begins just after the playhead (the first part's audio and video start
  // a few frames apart) counts: the playhead moves to its start.
  function startWhenBuffered(hls) {
    let started = false;
    const begin = Date.now();
    const start = function (why) {
      if (started || state.hls !== hls) return;
      started = true;
      state.startedBy = why;
      state.startupMs = Date.now() - begin;
      video.play().catch(function () {});
    };
    hls.on(Hls.Events.FRAG_BUFFERED, function () {
      const b = video.buffered;
      const t = video.currentTime;
      for (let i = 0; i < b.length; i++) {
        const from = Math.max(b.start(i), t);
        if (b.start(i) <= t + 0.5 && b.end(i) - from >= 0.6) {
          if (from > t) video.currentTime = from;
          start('buffer');
        }
      }
    });
    setTimeout(function () { start('timeout'); }, 4000); // a stream too short to buffer that much still plays
    keepNearLiveEdge(hls);
  }

  // hls.js speeds playback up (maxLiveSyncPlaybackRate) only while the latency is within one
  // target duration of its target; further behind it counts as DVR playback and stays there.
  // A live demo has no DVR: a slow start or a long stall that leaves the playhead that far
  // behind jumps back to hls.js' live sync position.
  function keepNearLiveEdge(hls) {
    const timer = setInterval(function () {
      if (state.hls !== hls) { clearInterval(timer); return; }
      const level = hls.levels && hls.levels[hls.currentLevel];
      const details = level && level.details;
      const target = hls.targetLatency;
      const sync = hls.liveSyncPosition;
      if (!details || !details.live || target === null || sync === null || video.paused) return;
      if (hls.latency - target > details.targetduration && sync > video.currentTime) {
        state.resyncs = (state.resyncs || 0) + 1;
        video.currentTime = sync;
      }
    }, 1000);
  }

  function play(name, src) {
    stop();
    state.stream = name;
    state.fatal = null;
    const isDash = format === 'dash' || (src && /\.mpd(\?|$)/.test(src));
    const url = src || ('/live/' + encodeURIComponent(name) + (isDash ? '/manifest.mpd' : '/master.m3u8'));
    if (!src) {
      const params = new URLSearchParams(location.search);
      params.set('stream', name);
      history.replaceState(null, '', '?' + params.toString());
    }
    if (isDash && window.dashjs) {
      playDash(url);
    } else if (window.Hls && Hls.isSupported()) {
      // low-latency HLS (parts, blocking reloads) unless ?format=hls
      const lowLatency = format !== 'hls';
      let config = lowLatency
        ? { lowLatencyMode: true, maxLiveSyncPlaybackRate: 1.5 }
        : { lowLatencyMode: false, liveSyncDurationCount: 3 };
      if (stock) config = { lowLatencyMode: lowLatency };
      const hls = new Hls(config);
      state.hls = hls;
      hls.on(Hls.Events.MANIFEST_PARSED, function () {
        picker.innerHTML = '<option value="-1">Auto</option>';
        hls.levels.forEach(function (level, i) {
          const o = document.createElement('option');
          o.value = String(i);
          o.textContent = level.height + 'p · ' + Math.round(level.bitrate / 1000) + ' kb/s';
          picker.appendChild(o);
        });
        if (!lowLatency || stock) video.play().catch(function () {});
      });
      if (lowLatency && !stock) startWhenBuffered(hls);
      hls.on(Hls.Events.LEVEL_SWITCHED, function (_e, data) {
        const l = hls.levels[data.level];
        if (l) info.textContent = 'playing ' + l.width + '×' + l.height;
      });
      hls.on(Hls.Events.ERROR, function (_e, data) {
        state.errors.push(data.type + ':' + data.details + (data.fatal ? ' (fatal)' : ''));
        if (data.fatal) {
          state.fatal = data.details;
          if (data.type === Hls.ErrorTypes.NETWORK_ERROR) {
            setTimeout(function () { if (state.stream === name) play(name, src); }, 2000);
          } else if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
            hls.recoverMediaError();
          }
        }
      });
      hls.loadSource(url);
      hls.attachMedia(video);
    } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
      video.src = url; // Safari plays HLS natively
      video.play().catch(function () {});
    }
    render(lastStreams);
  }

  picker.addEventListener('change', function () {
    if (state.hls) state.hls.currentLevel = parseInt(picker.value, 10);
  });

  formatPicker.addEventListener('change', function () {
    format = formatPicker.value;
    const params = new URLSearchParams(location.search);
    params.set('format', format);
    params.delete('ll');
    history.replaceState(null, '', '?' + params.toString());
    if (query.get('src')) play(null, query.get('src'));
    else if (state.stream) play(state.stream);
  });

  let lastStreams = [];
  function render(streams) {
    lastStreams = streams;
    list.innerHTML = '';
    streams.forEach(function (s) {
      const li = document.createElement('li');
      const b = document.createElement('button');
      const top = s.renditions.filter(function (r) { return r.kind === 'video'; })[0];
      b.textContent = s.name + (top ? ' · ' + top.height + 'p' : '') + ' · ' + s.viewers + ' viewers';
      b.dataset.stream = s.name;
      if (s.name === state.stream) b.className = 'active';
      b.addEventListener('click', function () { play(s.name); });
      li.appendChild(b);
      list.appendChild(li);
    });
    status.textContent = streams.length ? streams.length + ' live' : 'no live streams yet';
  }

  function refresh() {
    fetch('/api/streams').then(function (r) { return r.json(); }).then(function (j) {
      const live = j.streams.filter(function (s) { return s.live && s.ready; });
      render(live);
      const wanted = new URLSearchParams(location.search).get('stream');
      if (!state.stream && !query.get('src') && live.length) {
        const pick = live.find(function (s) { return s.name === wanted; }) || (wanted ? null : live[0]);
        if (pick) play(pick.name);
      }
    }).catch(function () { status.textContent = 'origin unreachable'; });
  }
  if (query.get('src')) {
    play(null, query.get('src'));
  }
  refresh();
  setInterval(refresh, 2000);
})();
