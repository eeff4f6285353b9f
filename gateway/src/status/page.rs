//! The status page: one self-contained HTML document (inline CSS, a small inline vanilla
//! script) that polls `status.json` every 2 s and updates itself.
//!
//! Invariants:
//! * The document holds no data and no secret, so it is served without authentication;
//!   the figures come from `status.json`, which needs the bearer token.
//! * The token reaches the page in the URL fragment (`/#token=...`, which browsers never
//!   send to the server, so it is in no access log) or through the page's form. The page
//!   keeps it in `sessionStorage` (gone when the tab closes) and removes the fragment from
//!   the address bar and the history at once.
//! * Nothing is fetched from anywhere but this endpoint: no fonts, no frameworks, no CDN
//!   (the box has no internet, and the hospital would not want it to). The
//!   Content-Security-Policy allows exactly this script and this style sheet (by SHA-256)
//!   and connections to this origin only.
//! * Everything shown is inserted with `textContent`, never as HTML, so a device id cannot
//!   inject markup.
//! * The page never shows old figures as current: when a poll fails the page says
//!   "stale" with the time of the last good answer and greys the figures out.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// The page and the Content-Security-Policy that goes with it.
#[derive(Debug)]
pub struct Page {
    /// The HTML document.
    pub html: String,
    /// The `Content-Security-Policy` header value for it.
    pub csp: String,
}

/// The page, built once.
#[must_use]
pub fn page() -> &'static Page {
    static PAGE: OnceLock<Page> = OnceLock::new();
    PAGE.get_or_init(|| Page {
        html: HTML
            .replace("/*STYLE*/", STYLE)
            .replace("/*SCRIPT*/", SCRIPT),
        csp: format!(
            "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; \
             img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            csp_hash(SCRIPT),
            csp_hash(STYLE)
        ),
    })
}

/// The CSP for every other response (JSON, metrics, errors): nothing may load from them.
pub const CSP_NONE: &str = "default-src 'none'; frame-ancestors 'none'";

/// `sha256-<base64>` of an inline element's content, as CSP hash sources are written.
fn csp_hash(content: &str) -> String {
    format!("sha256-{}", base64(&Sha256::digest(content.as_bytes())))
}

/// Standard base64 with padding (RFC 4648 §4), as CSP hash sources use.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

const HTML: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>wardgate status</title>
<style>/*STYLE*/</style>
</head>
<body>
<header>
  <h1>wardgate <span id="gateway-id"></span></h1>
  <p id="conn" class="loading" role="status" aria-live="polite">Loading…</p>
</header>
<form id="token-form" hidden>
  <label for="token-input">Status token</label>
  <input id="token-input" type="password" autocomplete="off" spellcheck="false" required>
  <button type="submit">Show status</button>
  <p id="token-note"></p>
</form>
<main id="data" class="empty">
  <section>
    <h2>Gateway</h2>
    <dl>
      <dt>Version</dt><dd id="gateway-version">–</dd>
      <dt>Up since</dt><dd id="gateway-started">–</dd>
      <dt>Last updated</dt><dd id="updated">never</dd>
    </dl>
  </section>
  <section>
    <h2>Uplink</h2>
    <dl>
      <dt>State</dt><dd id="uplink-state">–</dd>
      <dt>Since</dt><dd id="uplink-since">–</dd>
      <dt>Published records</dt><dd id="uplink-published">–</dd>
      <dt>In flight</dt><dd id="uplink-inflight">–</dd>
      <dt>Connects / failures</dt><dd id="uplink-connects">–</dd>
      <dt>Last error</dt><dd id="uplink-error">–</dd>
      <dt>Client certificate expires</dt><dd id="uplink-cert">–</dd>
    </dl>
  </section>
  <section>
    <h2>Spool</h2>
    <dl>
      <dt>Records waiting</dt><dd id="spool-records">–</dd>
      <dt>Per class</dt><dd id="spool-classes">–</dd>
      <dt>Disk use</dt><dd id="spool-bytes">–</dd>
      <dt>Oldest record</dt><dd id="spool-oldest">–</dd>
      <dt>Evicted (since start)</dt><dd id="spool-evicted">–</dd>
      <dt>Expired (since start)</dt><dd id="spool-expired">–</dd>
      <dt>Refused, spool full</dt><dd id="spool-refused">–</dd>
    </dl>
  </section>
  <section>
    <h2>HL7 listener</h2>
    <dl>
      <dt>Open connections</dt><dd id="hl7-connections">–</dd>
      <dt>Messages accepted / errored / rejected</dt><dd id="hl7-messages">–</dd>
      <dt>Rate-limited / oversized</dt><dd id="hl7-refused">–</dd>
    </dl>
  </section>
  <section>
    <h2>Imaging</h2>
    <p id="imaging-off" hidden>No bulk upload is configured ([bulk_upload]).</p>
    <dl id="imaging">
      <dt>Outbox</dt><dd id="imaging-outbox">–</dd>
      <dt>Oldest waiting file</dt><dd id="imaging-oldest">–</dd>
      <dt>Uploaded (since start)</dt><dd id="imaging-uploaded">–</dd>
      <dt>Held back for a patient / hash retries / connection failures</dt><dd id="imaging-problems">–</dd>
      <dt>DICOM stored / quarantined / refused</dt><dd id="imaging-dicom">–</dd>
    </dl>
  </section>
  <section class="wide">
    <h2>Devices</h2>
    <table id="devices">
      <thead><tr><th>Device</th><th>Kind</th><th>Adapter</th><th>State</th><th>Since</th><th>Last data</th></tr></thead>
      <tbody></tbody>
    </table>
    <p id="devices-none" hidden>No devices are configured.</p>
  </section>
  <section class="wide">
    <h2>Staged updates</h2>
    <ul id="patches"></ul>
  </section>
  <section class="wide">
    <h2>Alerts</h2>
    <ul id="alerts"></ul>
  </section>
</main>
<script>/*SCRIPT*/</script>
</body>
</html>
"#;

const STYLE: &str = r"
:root { color-scheme: light dark; --ok: #1a7f37; --bad: #c62828; --warn: #b26a00; --dim: #777; }
* { box-sizing: border-box; }
body { font: 15px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 1rem; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 1rem; }
h1 { font-size: 1.4rem; margin: 0; }
h2 { font-size: 1.05rem; margin: 0 0 .4rem; }
#conn { margin: 0; padding: .2rem .6rem; border-radius: .3rem; font-weight: 600; }
#conn.ok { color: var(--ok); }
#conn.loading { color: var(--dim); }
#conn.stale, #conn.error { color: #fff; background: var(--bad); }
main { display: grid; grid-template-columns: repeat(auto-fit, minmax(20rem, 1fr)); gap: 1rem; margin-top: 1rem; }
main.stale, main.empty { opacity: .45; }
section { border: 1px solid #8884; border-radius: .4rem; padding: .6rem .8rem; }
section.wide { grid-column: 1 / -1; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: 0; }
dt { color: var(--dim); }
dd { margin: 0; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #8884; }
td { font-variant-numeric: tabular-nums; }
.state-online, .up { color: var(--ok); font-weight: 600; }
.state-offline, .state-error, .down { color: var(--bad); font-weight: 600; }
.state-in-procedure, .state-updating { color: var(--warn); font-weight: 600; }
.state-unknown { color: var(--dim); }
ul { margin: 0; padding-left: 1.2rem; }
form { margin-top: 1rem; display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; }
form p { flex-basis: 100%; margin: 0; color: var(--bad); }
";

const SCRIPT: &str = r#"
"use strict";
(function () {
  var POLL_MS = 2000;
  var TIMEOUT_MS = 5000;
  var KEY = "wardgate.status.token";
  var memoryToken = null;
  var lastGood = 0;
  var timer = null;
  var $ = function (id) { return document.getElementById(id); };

  function readToken() {
    try { return window.sessionStorage.getItem(KEY) || memoryToken; } catch (e) { return memoryToken; }
  }
  function storeToken(t) {
    memoryToken = t;
    try {
      if (t === null) { window.sessionStorage.removeItem(KEY); } else { window.sessionStorage.setItem(KEY, t); }
    } catch (e) { /* storage disabled: the token lives in this page only */ }
  }
  function takeTokenFromFragment() {
    var m = /(?:^#|&)token=([^&]*)/.exec(window.location.hash);
    if (!m) { return; }
    var t = null;
    try { t = decodeURIComponent(m[1]); } catch (e) { t = null; }
    if (t) { storeToken(t); }
    // Out of the address bar and the history: a shoulder or a screenshot must not carry it.
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
  }

  function text(id, value) { $(id).textContent = value; }
  function num(n) { return typeof n === "number" ? n.toLocaleString("en-US") : "–"; }
  function when(ms) { return ms ? new Date(ms).toLocaleString() : "–"; }
  function duration(secs) {
    if (typeof secs !== "number") { return "–"; }
    if (secs < 120) { return secs + " s"; }
    if (secs < 7200) { return Math.floor(secs / 60) + " min"; }
    if (secs < 172800) { return Math.floor(secs / 3600) + " h " + Math.floor(secs % 3600 / 60) + " min"; }
    return Math.floor(secs / 86400) + " days";
  }
  function ago(ms, now) { return ms ? duration(Math.max(0, Math.floor((now - ms) / 1000))) + " ago" : "never"; }
  function bytes(n) {
    if (typeof n !== "number") { return "–"; }
    if (n < 1024) { return n + " B"; }
    if (n < 1048576) { return (n / 1024).toFixed(1) + " KiB"; }
    if (n < 1073741824) { return (n / 1048576).toFixed(1) + " MiB"; }
    return (n / 1073741824).toFixed(2) + " GiB";
  }
  function classes(c) {
    return "alarm " + num(c.alarm) + ", observation " + num(c.observation) +
      ", state " + num(c.state) + ", log " + num(c.log);
  }
  function cell(row, value, cls) {
    var td = document.createElement("td");
    td.textContent = value;
    if (cls) { td.className = cls; }
    row.appendChild(td);
  }
  function list(id, items, empty, render) {
    var ul = $(id);
    ul.textContent = "";
    if (items.length === 0) {
      var li = document.createElement("li");
      li.textContent = empty;
      ul.appendChild(li);
      return;
    }
    items.forEach(function (item) {
      var li = document.createElement("li");
      li.textContent = render(item);
      ul.appendChild(li);
    });
  }

  function render(s) {
    var now = s.generated_at_ms;
    text("gateway-id", s.gateway.id);
    document.title = "wardgate " + s.gateway.id + " status";
    text("gateway-version", s.gateway.version);
    text("gateway-started", when(s.gateway.started_at_ms) + " (up " + duration(s.gateway.uptime_secs) + ")");
    text("updated", new Date(now).toLocaleTimeString());

    var u = s.uplink;
    var st = $("uplink-state");
    st.textContent = u.connected ? "connected" : "disconnected";
    st.className = u.connected ? "up" : "down";
    text("uplink-since", u.since_ms ? when(u.since_ms) + " (" + ago(u.since_ms, now) + ")" : "never connected since start");
    text("uplink-published", num(u.published_records) + " records in " + num(u.published_batches) + " publishes");
    text("uplink-inflight", num(u.in_flight_records));
    text("uplink-connects", num(u.connects) + " / " + num(u.connection_failures));
    text("uplink-error", u.last_error || "none");
    text("uplink-cert", u.client_cert_not_after ? when(u.client_cert_not_after * 1000) : "not loaded yet");

    var sp = s.spool;
    text("spool-records", num(sp.records));
    text("spool-classes", classes(sp.records_by_class) + " (" + num(sp.leased_records) + " handed to the uplink)");
    var pct = sp.budget_bytes ? " (" + (100 * sp.bytes / sp.budget_bytes).toFixed(1) + " %)" : "";
    text("spool-bytes", bytes(sp.bytes) + " of " + bytes(sp.budget_bytes) + pct);
    text("spool-oldest", sp.oldest_record_age_secs === null || sp.oldest_record_age_secs === undefined
      ? "spool is empty" : duration(sp.oldest_record_age_secs) + " old");
    text("spool-evicted", classes(sp.evicted_records));
    text("spool-expired", classes(sp.expired_records));
    text("spool-refused", num(sp.refused_records));

    var im = s.imaging;
    document.getElementById("imaging-off").hidden = !!im;
    document.getElementById("imaging").hidden = !im;
    if (im) {
      var ipct = im.outbox_budget_bytes ? " (" + (100 * im.outbox_bytes / im.outbox_budget_bytes).toFixed(1) + " %)" : "";
      text("imaging-outbox", num(im.outbox_files) + " files, " + bytes(im.outbox_bytes) + " of " + bytes(im.outbox_budget_bytes) + ipct);
      text("imaging-oldest", im.oldest_file_age_secs === null || im.oldest_file_age_secs === undefined
        ? "outbox is empty" : duration(im.oldest_file_age_secs) + " old");
      text("imaging-uploaded", num(im.files_uploaded) + " files, " + bytes(im.bytes_sent));
      text("imaging-problems", num(im.deferrals) + " / " + num(im.hash_mismatches) + " / " + num(im.connection_failures));
      text("imaging-dicom", num(im.dicom_stored) + " / " + num(im.dicom_quarantined) + " / " + num(im.dicom_refused));
    }

    var h = s.hl7;
    text("hl7-connections", num(h.connections_active));
    text("hl7-messages", num(h.messages_accepted) + " / " + num(h.messages_errored) + " / " + num(h.messages_rejected));
    text("hl7-refused", num(h.rate_limited) + " / " + num(h.frames_too_large));

    var tbody = $("devices").tBodies[0];
    tbody.textContent = "";
    s.devices.forEach(function (d) {
      var row = document.createElement("tr");
      row.setAttribute("data-device", d.id);
      cell(row, d.id);
      cell(row, d.kind);
      cell(row, d.adapter);
      cell(row, d.state, "state-" + d.state);
      cell(row, ago(d.state_since_ms, now));
      cell(row, d.last_data_ms ? ago(d.last_data_ms, now) : "none since start");
      tbody.appendChild(row);
    });
    $("devices-none").hidden = s.devices.length !== 0;

    if (s.patches === null || s.patches === undefined) {
      list("patches", [], "Updates are not configured on this gateway ([updates]).", null);
    } else {
      list("patches", s.patches, "No updates staged.", function (p) {
        var rollouts = p.rollouts && p.rollouts.length ? " – " + p.rollouts.join("; ") : "";
        return p.target + " (" + bytes(p.bytes) + ", sha256 " + p.sha256.slice(0, 12) + "…)" + rollouts;
      });
    }
    list("alerts", s.alerts, "No alerts.", function (a) {
      return when(a.at_ms) + " – " + a.code + ": " + a.message;
    });
  }

  function setConn(cls, message) {
    var c = $("conn");
    c.className = cls;
    c.textContent = message;
    $("data").className = cls === "ok" ? "" : (lastGood ? "stale" : "empty");
  }
  function stale(reason) {
    setConn(lastGood ? "stale" : "error", (lastGood
      ? "Stale: no answer since " + new Date(lastGood).toLocaleTimeString() + " – "
      : "No data – ") + reason);
  }
  function askForToken(note) {
    $("token-form").hidden = false;
    text("token-note", note || "");
    setConn(lastGood ? "stale" : "error", note ? note : "A token is needed to show the status.");
  }

  function schedule() { timer = window.setTimeout(poll, POLL_MS); }
  function poll() {
    timer = null;
    var token = readToken();
    if (!token) { askForToken(""); return; }
    var ctl = new AbortController();
    var deadline = window.setTimeout(function () { ctl.abort(); }, TIMEOUT_MS);
    window.fetch("status.json", {
      headers: { "Authorization": "Bearer " + token },
      cache: "no-store",
      credentials: "omit",
      signal: ctl.signal
    }).then(function (r) {
      if (r.status === 401) {
        storeToken(null);
        askForToken("The token was refused.");
        return null;
      }
      if (r.status === 429) {
        var after = r.headers.get("Retry-After");
        stale("too many failed attempts from this address, retry in " + (after || "a while") + " s");
        schedule();
        return null;
      }
      if (!r.ok) { throw new Error("the gateway answered " + r.status); }
      return r.json().then(function (s) {
        try {
          render(s);
        } catch (e) {
          stale("the gateway's answer cannot be shown (" + e.message + ")");
          schedule();
          return;
        }
        lastGood = Date.now();
        $("token-form").hidden = true;
        setConn("ok", "Live – updated " + new Date(lastGood).toLocaleTimeString());
        schedule();
      });
    }).catch(function (e) {
      stale(e && e.name === "AbortError" ? "the gateway did not answer in time" : "cannot reach the gateway");
      schedule();
    }).finally(function () { window.clearTimeout(deadline); });
  }

  $("token-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var t = $("token-input").value.trim();
    $("token-input").value = "";
    if (!t) { return; }
    storeToken(t);
    $("token-form").hidden = true;
    setConn(lastGood ? "stale" : "loading", "Loading…");
    if (timer !== null) { window.clearTimeout(timer); timer = null; }
    poll();
  });

  takeTokenFromFragment();
  poll();
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), output, "{input}");
        }
    }

    #[test]
    fn csp_names_the_exact_inline_script_and_style() {
        let p = page();
        // The hash must be over exactly what sits between the tags.
        assert!(p.html.contains(&format!("<script>{SCRIPT}</script>")));
        assert!(p.html.contains(&format!("<style>{STYLE}</style>")));
        assert!(p
            .csp
            .contains(&format!("script-src '{}'", csp_hash(SCRIPT))));
        assert!(p.csp.contains(&format!("style-src '{}'", csp_hash(STYLE))));
        assert!(!p.csp.contains("unsafe"));
        assert_eq!(p.html.matches("<script").count(), 1);
        assert_eq!(p.html.matches("<style").count(), 1);
    }

    #[test]
    fn the_page_refers_to_nothing_outside_itself() {
        let html = &page().html;
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(!html.contains(" src="));
        assert!(!html.contains("innerHTML"));
    }
}
