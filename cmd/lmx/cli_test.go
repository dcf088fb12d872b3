//go:build unix

package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A broker is an `lmx start` process.
type broker struct {
	*proc
	addr    string   // the first URL it listens at
	urls    []string // every URL it listens at
	metrics string   // its metrics URL, if any
}

// startBroker starts `lmx start` with args in env (baseEnv when nil), logging
// JSON, and waits for its ready line.
func startBroker(t *testing.T, env []string, args ...string) *broker {
	t.Helper()
	p := spawn(t, env, append([]string{"start", "--log-format", "json"}, args...)...)
	line := p.waitErr(t, `"lmx broker ready"`)
	var ready struct {
		Listen  []string `json:"listen"`
		Metrics string   `json:"metrics"`
	}
	require.NoError(t, json.Unmarshal([]byte(line), &ready), line)
	require.NotEmpty(t, ready.Listen, line)
	return &broker{proc: p, addr: ready.Listen[0], urls: ready.Listen, metrics: ready.Metrics}
}

// newBroker starts a broker on a Unix socket of its own, with metrics.
func newBroker(t *testing.T) *broker {
	t.Helper()
	sock := filepath.Join(shortDir(t), "lmx.sock")
	return startBroker(t, nil, "--listen", "unix://"+sock, "--metrics", "127.0.0.1:0")
}

// args puts --addr after the command name in args.
func (b *broker) args(args ...string) []string {
	return append([]string{args[0], "--addr", b.addr}, args[1:]...)
}

// held reports the holders of key.
func (b *broker) holders(t *testing.T, key string) int {
	t.Helper()
	var info infoOut
	require.NoError(t, json.Unmarshal([]byte(must(t, b.args("inspect", key, "--json")...)), &info))
	return len(info.Holders)
}

func TestAcquireRelease(t *testing.T) {
	b := newBroker(t)

	out := must(t, b.args("acquire", "deploy", "--ttl", "1m", "--json")...)
	var l leaseOut
	require.NoError(t, json.Unmarshal([]byte(out), &l), out)
	assert.Equal(t, "deploy", l.Key)
	_, err := ulid.ParseStrict(l.ID)
	require.NoError(t, err)
	assert.NotZero(t, l.Token)
	require.NotNil(t, l.Expires)
	assert.WithinDuration(t, time.Now().Add(time.Minute), *l.Expires, 10*time.Second)

	// The lock outlives the process that took it.
	r := mustFail(t, exitLocked, b.args("acquire", "deploy")...)
	assert.Contains(t, r.stderr, "deploy is held by another")
	mustFail(t, exitTimeout, b.args("acquire", "deploy", "--wait", "200ms")...)
	assert.Contains(t, must(t, b.args("ls")...), "deploy")
	assert.Equal(t, 1, b.holders(t, "deploy"))
	human := must(t, b.args("inspect", "deploy")...)
	assert.Contains(t, human, l.ID)

	// Another process releases it by id; a stale id changes nothing.
	assert.Equal(t, "released deploy "+l.ID+"\n", must(t, b.args("release", "deploy", l.ID)...))
	assert.Equal(t, 0, b.holders(t, "deploy"))
	r = mustFail(t, exitError, b.args("release", "deploy", l.ID)...)
	assert.Contains(t, r.stderr, "not held")

	// -q prints the id alone; --force ends any holder's lease.
	id := strings.TrimSpace(must(t, b.args("acquire", "-q", "deploy", "--ttl", "10s")...))
	_, err = ulid.ParseStrict(id)
	require.NoError(t, err, id)
	must(t, b.args("release", "deploy", "--force")...)
	assert.Equal(t, 0, b.holders(t, "deploy"))
	mustFail(t, exitError, b.args("release", "deploy", "--force")...)
	assert.Equal(t, "no keys held or awaited\n", must(t, b.args("ls")...))

	// A semaphore admits --limit holders.
	must(t, b.args("acquire", "slots", "--limit", "2")...)
	must(t, b.args("acquire", "slots", "--limit", "2")...)
	mustFail(t, exitLocked, b.args("acquire", "slots", "--limit", "2")...)
}

func TestAcquireExpires(t *testing.T) {
	b := newBroker(t)
	must(t, b.args("acquire", "short", "--ttl", "300ms")...)
	// --wait outlasts the TTL: the key passes on when it expires.
	must(t, b.args("acquire", "short", "--wait", "10s")...)
	var stats statsOut
	require.NoError(t, json.Unmarshal([]byte(must(t, b.args("stats", "--json")...)), &stats))
	assert.EqualValues(t, 1, stats.Expiries)
	assert.EqualValues(t, 2, stats.Grants)
}

func TestJSONOutput(t *testing.T) {
	b := newBroker(t)
	for _, k := range []string{"jobs/a", "jobs/b", "other"} {
		must(t, b.args("acquire", k, "--owner", "tester")...)
	}

	out := must(t, b.args("ls", "jobs/", "--json")...)
	var keys []keyOut
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var k keyOut
		require.NoError(t, json.Unmarshal(sc.Bytes(), &k), sc.Text())
		keys = append(keys, k)
	}
	assert.Equal(t, []keyOut{{Key: "jobs/a", Limit: 1, Holders: 1}, {Key: "jobs/b", Limit: 1, Holders: 1}}, keys)

	var info infoOut
	out = must(t, b.args("inspect", "jobs/a", "--json")...)
	require.NoError(t, json.Unmarshal([]byte(out), &info), out)
	require.Len(t, info.Holders, 1)
	assert.Equal(t, "tester", info.Holders[0].Owner)
	assert.NotNil(t, info.Holders[0].Expires)
	assert.Empty(t, info.Waiters)

	var ping pingOut
	out = must(t, b.args("ping", "--json")...)
	require.NoError(t, json.Unmarshal([]byte(out), &ping), out)
	assert.Equal(t, b.addr, ping.Addr)
	assert.Positive(t, ping.RoundTripSeconds)

	var stats statsOut
	out = must(t, b.args("stats", "--json")...)
	require.NoError(t, json.Unmarshal([]byte(out), &stats), out)
	assert.Equal(t, 3, stats.Keys)
	assert.Equal(t, 3, stats.Holders)
	assert.EqualValues(t, 3, stats.Grants)
	assert.Len(t, stats.WaitTime.Buckets, 15)
	assert.Equal(t, "14400", stats.WaitTime.Buckets[13].LE, "the last bound: 4 hours")
	assert.Equal(t, "+Inf", stats.WaitTime.Buckets[14].LE)

	var rel releaseOut
	out = must(t, b.args("release", "other", "--force", "--json")...)
	require.NoError(t, json.Unmarshal([]byte(out), &rel), out)
	assert.Equal(t, releaseOut{Key: "other", Forced: true}, rel)

	human := must(t, b.args("stats")...)
	assert.Regexp(t, `(?m)^grants\s+3\s`, human)
}

func TestRunPassesExitStatus(t *testing.T) {
	b := newBroker(t)
	mustFail(t, 42, b.args("run", "job", "--", "sh", "-c", "exit 42")...)
	must(t, b.args("run", "job", "--", "true")...)
	// Without "--", the first argument after KEY starts the command.
	out := must(t, b.args("run", "job", "sh", "-c", `echo "$LMX_LOCK_KEY $LMX_LOCK_TOKEN"`)...)
	assert.Regexp(t, `^job \d+\n$`, out)
	r := mustFail(t, 127, b.args("run", "job", "--", "/nonexistent/command")...)
	assert.Contains(t, r.stderr, "/nonexistent/command")
	// Flags after KEY are lmx's, after the command's name the command's.
	assert.Equal(t, "--ttl\n", must(t, b.args("run", "job", "--ttl", "5s", "echo", "--ttl")...))
	assert.Equal(t, 0, b.holders(t, "job"), "run left the lock held")
}

func TestRunDoesNotOverlap(t *testing.T) {
	b := newBroker(t)
	file := filepath.Join(shortDir(t), "log")
	script := `echo "start $$" >> "$0"; sleep 0.3; echo "end $$" >> "$0"`
	const n = 3
	start := time.Now()
	var runs []*proc
	for range n {
		runs = append(runs, spawn(t, nil, b.args("run", "shared-file", "--", "sh", "-c", script, file)...))
	}
	for _, p := range runs {
		require.Equal(t, 0, p.wait(t), "stderr: %s", p.stderr)
	}
	assert.GreaterOrEqual(t, time.Since(start), n*300*time.Millisecond, "the commands ran at once")
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	require.Len(t, lines, 2*n, "%s", data)
	for i := 0; i < len(lines); i += 2 {
		pid, ok := strings.CutPrefix(lines[i], "start ")
		require.True(t, ok, "interleaved:\n%s", data)
		require.Equal(t, "end "+pid, lines[i+1], "interleaved:\n%s", data)
	}
}

func TestRunTry(t *testing.T) {
	b := newBroker(t)
	must(t, b.args("acquire", "busy")...)
	marker := filepath.Join(shortDir(t), "ran")
	r := mustFail(t, exitLocked, b.args("run", "busy", "--try", "--", "touch", marker)...)
	assert.Contains(t, r.stderr, "busy is held by another")
	mustFail(t, exitTimeout, b.args("run", "busy", "--wait", "200ms", "--", "touch", marker)...)
	assert.NoFileExists(t, marker)
	must(t, b.args("release", "busy", "--force")...)
	must(t, b.args("run", "busy", "--try", "--", "touch", marker)...)
	assert.FileExists(t, marker)
}

func TestRunLeaseLost(t *testing.T) {
	b := newBroker(t)

	// Forced from elsewhere: the command is killed at once.
	p := spawn(t, nil, b.args("run", "long", "--", "sleep", "30")...)
	eventually(t, "run holds the lock", func() bool { return b.holders(t, "long") == 1 })
	start := time.Now()
	must(t, b.args("release", "long", "--force")...)
	require.Equal(t, exitLeaseLost, p.wait(t), "stderr: %s", p.stderr)
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.Contains(t, p.stderr.String(), "forcibly unlocked")

	// A TTL without --keepalive runs out under a long command.
	r := mustFail(t, exitLeaseLost, b.args("run", "long", "--ttl", "300ms", "--", "sleep", "10")...)
	assert.Contains(t, r.stderr, "expired")
}

func TestRunKeepAlive(t *testing.T) {
	b := newBroker(t)
	// Renewed by the broker when half its TTL is left, the lease outlives its
	// 1.5s TTL.
	must(t, b.args("run", "kept", "--ttl", "1.5s", "--keepalive", "--", "sleep", "3.2")...)
	var stats statsOut
	require.NoError(t, json.Unmarshal([]byte(must(t, b.args("stats", "--json")...)), &stats))
	assert.Zero(t, stats.Expiries)
}

func TestRunForwardsSignals(t *testing.T) {
	b := newBroker(t)
	// The command traps SIGTERM, passed on by lmx run, and exits 7.
	script := `trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done`
	p := spawn(t, nil, b.args("run", "sig", "--", "sh", "-c", script)...)
	p.waitOut(t, "ready")
	p.signal(t, syscall.SIGTERM)
	require.Equal(t, 7, p.wait(t), "stderr: %s", p.stderr)
	assert.Contains(t, p.stdout.String(), "got TERM")
	assert.Equal(t, 0, b.holders(t, "sig"), "the lock outlived the command")

	// A command killed by a signal exits 128+N.
	p = spawn(t, nil, b.args("run", "sig", "--", "sh", "-c", "echo ready; exec sleep 30")...)
	p.waitOut(t, "ready")
	p.signal(t, syscall.SIGTERM)
	require.Equal(t, 128+int(syscall.SIGTERM), p.wait(t), "stderr: %s", p.stderr)
	assert.Equal(t, 0, b.holders(t, "sig"), "the lock outlived the command")
}

func TestWatch(t *testing.T) {
	b := newBroker(t)
	w := spawn(t, nil, b.args("watch", "jobs/", "--json")...)
	w.waitErr(t, "watching")
	h := spawn(t, nil, b.args("watch", "jobs/")...) // for people
	h.waitErr(t, "watching")

	must(t, b.args("acquire", "elsewhere")...)
	id := strings.TrimSpace(must(t, b.args("acquire", "-q", "jobs/1", "--owner", "me")...))
	must(t, b.args("release", "jobs/1", id)...)
	must(t, b.args("run", "jobs/2", "--", "true")...)

	var events []eventOut
	for i, line := range w.waitLines(t, 4) {
		var ev eventOut
		require.NoError(t, json.Unmarshal([]byte(line), &ev), line)
		assert.Equal(t, []string{"acquired", "released", "acquired", "released"}[i], ev.Type, line)
		events = append(events, ev)
	}
	assert.Equal(t, eventOut{Type: "acquired", Key: "jobs/1", ID: id, Token: events[0].Token, Owner: "me", Time: events[0].Time}, events[0])
	assert.Equal(t, "jobs/1", events[1].Key)
	assert.Equal(t, id, events[1].ID)
	assert.Equal(t, "jobs/2", events[2].Key)
	assert.Equal(t, "jobs/2", events[3].Key)
	assert.NotContains(t, w.stdout.String(), "elsewhere")

	h.waitOut(t, "released     jobs/2")
	assert.Regexp(t, `acquired +jobs/1 id=`+id+` token=\d+ owner=me`, h.stdout.String())

	// Interrupted, watch ends well.
	w.signal(t, syscall.SIGINT)
	assert.Equal(t, 0, w.wait(t), "stderr: %s", w.stderr)
	// When the broker goes, watch fails with exit code 5.
	b.signal(t, syscall.SIGTERM)
	assert.Equal(t, 0, b.wait(t))
	assert.Equal(t, exitUnreachable, h.wait(t), "stderr: %s", h.stderr)
}

func TestMetricsAndShutdown(t *testing.T) {
	b := newBroker(t)
	require.NotEmpty(t, b.metrics)
	must(t, b.args("acquire", "m", "--ttl", "300ms")...) // expires
	must(t, b.args("acquire", "m", "--wait", "10s")...)  // perhaps waits for it
	waiter := spawn(t, nil, b.args("acquire", "m", "--wait", "10s")...)
	eventually(t, "a waiter queues", func() bool {
		var info infoOut
		require.NoError(t, json.Unmarshal([]byte(must(t, b.args("inspect", "m", "--json")...)), &info))
		return len(info.Waiters) == 1
	})
	must(t, b.args("release", "m", "--force")...) // the waiter gets it
	require.Equal(t, 0, waiter.wait(t), "stderr: %s", waiter.stderr)
	must(t, b.args("release", "m", "--force")...)
	must(t, b.args("run", "m", "--", "true")...)

	body := httpGet(t, b.metrics, http.StatusOK)
	for _, want := range []string{
		"# TYPE lmx_grants_total counter\nlmx_grants_total 4\n",
		"lmx_expiries_total 1\n",
		"lmx_forced_total 2\n",
		"lmx_preemptions_total 0\n",
		"lmx_session_lost_total 0\n",
		"# TYPE lmx_keys gauge\nlmx_keys 0\n",
		"lmx_holders 0\n",
		"lmx_waiters 0\n",
		"lmx_sessions 0\n",
		"# TYPE lmx_wait_seconds histogram\n",
		"# TYPE lmx_hold_seconds histogram\n",
		`lmx_hold_seconds_bucket{le="60"} 4` + "\n",
		`lmx_hold_seconds_bucket{le="+Inf"} 4` + "\n",
		"lmx_hold_seconds_count 4\n",
	} {
		assert.Contains(t, body, want)
	}
	assert.Regexp(t, regexp.MustCompile(`(?m)^lmx_hold_seconds_sum \d`), body)
	// One or two waits, the one made sure of in the 10s bucket and below.
	assert.Regexp(t, `lmx_wait_seconds_bucket\{le="10"\} [12]\n`, body)
	assert.Regexp(t, `lmx_wait_seconds_bucket\{le="\+Inf"\} [12]\n`, body)
	assert.Regexp(t, `lmx_wait_seconds_count [12]\n`, body)
	healthz := strings.TrimSuffix(b.metrics, "/metrics") + "/healthz"
	assert.Equal(t, "ok\n", httpGet(t, healthz, http.StatusOK))

	b.signal(t, syscall.SIGTERM)
	assert.Equal(t, 0, b.wait(t), "stderr: %s", b.stderr)
	assert.Contains(t, b.stderr.String(), `"lmx broker stopped"`)
	_, err := http.Get(healthz)
	assert.Error(t, err, "metrics still served after shutdown")
	mustFail(t, exitUnreachable, b.args("ping")...)
}

func httpGet(t *testing.T, url string, status int) string {
	t.Helper()
	c := http.Client{Timeout: waitShort}
	resp, err := c.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, status, resp.StatusCode, "%s", body)
	return string(body)
}

func TestUnreachable(t *testing.T) {
	dir := shortDir(t)
	r := mustFail(t, exitUnreachable, "ping", "--addr", "unix://"+filepath.Join(dir, "none.sock"))
	assert.Contains(t, r.stderr, "no broker answers")

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := "tcp://" + ln.Addr().String()
	ln.Close()
	mustFail(t, exitUnreachable, "acquire", "k", "--addr", closed)
	mustFail(t, exitUnreachable, "run", "k", "--addr", closed, "--", "true")
	mustFail(t, exitUnreachable, "ls", "--addr", closed)
}

func TestDefaultAddress(t *testing.T) {
	// No --addr and no $LMX_ADDR: the default socket, in $XDG_RUNTIME_DIR.
	dir := shortDir(t)
	sock := filepath.Join(dir, "lmx.sock")
	b := startBroker(t, nil, "--listen", "unix://"+sock)
	r := runLmxEnv(t, baseEnv("XDG_RUNTIME_DIR="+dir), "ping")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "unix://"+sock+": connected")

	// $LMX_ADDR says where.
	r = runLmxEnv(t, baseEnv("LMX_ADDR="+b.addr), "acquire", "via-env")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, 1, b.holders(t, "via-env"))
}

func TestAuthAndTLS(t *testing.T) {
	dir := shortDir(t)
	certs := writeCerts(t, dir)
	// Flags from the environment: a comma-separated LMX_BROKER_LISTEN among
	// them. A client's variables beside them, naming the client's
	// certificate, do not reach the broker.
	b := startBroker(t, baseEnv(
		"LMX_BROKER_LISTEN=unix://"+filepath.Join(dir, "lmx.sock")+",tcp://127.0.0.1:0",
		"LMX_BROKER_TOKEN=s3cret",
		"LMX_BROKER_TLS_CERT="+certs.serverCert, "LMX_BROKER_TLS_KEY="+certs.serverKey, "LMX_BROKER_TLS_CLIENT_CA="+certs.ca,
		"LMX_TLS_CERT="+certs.clientCert, "LMX_TLS_KEY="+certs.clientKey, "LMX_TOKEN=wrong",
	))
	require.Len(t, b.urls, 2)
	tcp := b.urls[1]
	require.True(t, strings.HasPrefix(tcp, "tcp://127.0.0.1:"), tcp)

	client := []string{"--addr", tcp, "--tls-ca", certs.ca, "--tls-cert", certs.clientCert, "--tls-key", certs.clientKey}
	r := runLmxEnv(t, baseEnv("LMX_TOKEN=s3cret"), append([]string{"ping"}, client...)...)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, tcp+": connected")

	// The Unix socket: no TLS, but the token.
	must(t, "ls", "--addr", b.addr, "--token", "s3cret")
	r = mustFail(t, exitError, "ls", "--addr", b.addr, "--token", "wrong")
	assert.Contains(t, r.stderr, "unauthorized")

	// A broker that answers and refuses is not unreachable.
	mustFail(t, exitError, append([]string{"ping", "--token", "wrong"}, client...)...)
	mustFail(t, exitError, "ping", "--addr", tcp, "--tls-ca", certs.ca, "--token", "s3cret") // no client certificate
	mustFail(t, exitError, "ping", "--addr", tcp, "--tls", "--tls-cert", certs.clientCert, "--tls-key", certs.clientKey, "--token", "s3cret")
}

// certs are the PEM files of a CA and of the certificates it signed.
type certs struct{ ca, serverCert, serverKey, clientCert, clientKey string }

func writeCerts(t *testing.T, dir string) certs {
	t.Helper()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		return k
	}
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
		return path
	}
	writeKey := func(name string, k *ecdsa.PrivateKey) string {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		require.NoError(t, err)
		return write(name, "PRIVATE KEY", der)
	}
	now := time.Now()
	caKey := newKey()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "lmx test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	sign := func(serial int64, name string, usage x509.ExtKeyUsage, k *ecdsa.PrivateKey) []byte {
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		require.NoError(t, err)
		return der
	}
	serverKey, clientKey := newKey(), newKey()
	return certs{
		ca:         write("ca.pem", "CERTIFICATE", caDER),
		serverCert: write("server.pem", "CERTIFICATE", sign(2, "broker", x509.ExtKeyUsageServerAuth, serverKey)),
		serverKey:  writeKey("server.key", serverKey),
		clientCert: write("client.pem", "CERTIFICATE", sign(3, "client", x509.ExtKeyUsageClientAuth, clientKey)),
		clientKey:  writeKey("client.key", clientKey),
	}
}

func TestUsageAndHelp(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"bogus"},
		{"acquire"},
		{"acquire", "a", "b"},
		{"acquire", "k", "--ttl", "0s"},
		{"acquire", "k", "--bogus"},
		{"release", "k"},
		{"release", "k", "not-an-id"},
		{"release", "k", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "--force"},
		{"run", "k"},
		{"run", "--", "true"},
		{"run", "k", "--try", "--wait", "1s", "--", "true"},
		{"ls", "--addr", "ftp://nowhere"},
		{"start", "--log-format", "xml"},
		{"extend", "k"},
		{"acquire", "k", "--conflict-exit-code", "300"},
	} {
		r := runLmx(t, args...)
		assert.Equal(t, exitUsage, r.code, "lmx %v: %s", args, r.stderr)
	}
	// Errors a person can act on: what was wrong, and what was expected.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"aquire", "k"}, `unknown command "aquire"; did you mean acquire?`},
		{[]string{"help", "relase"}, `did you mean release?`},
		{[]string{"acquire", "k", "--ttll", "1m"}, "unknown flag --ttll; did you mean --ttl?"},
		{[]string{"acquire", "k", "--tll", "1m"}, "unknown flag --tll; did you mean --tls or --ttl?"},
		{[]string{"ls", "--zzzzzz"}, "unknown flag --zzzzzz; lmx ls takes --addr, --connect-timeout, --json, --max,"},
		{[]string{"acquire", "k", "--ttl", "soon"}, `--ttl "soon": not a duration, such as 30s, 5m or 1h30m`},
		{[]string{"acquire", "k", "--wait", "later"}, `--wait "later": not a duration, such as 30s or 5m, or forever`},
		{[]string{"acquire", "k", "--limit", "two"}, `--limit "two": not a whole number`},
		{[]string{"acquire", "k", "--ttl"}, "--ttl needs a value"},
		{[]string{"release", "k", "notanid"}, `ID "notanid" is not a lock id: lock ids are 26 letters and digits`},
		{[]string{"extend", "k", "notanid"}, `ID "notanid" is not a lock id`},
		{[]string{"ls", "--addr", "localhost"}, `"localhost" is not unix:///path, tcp://host:port, host:port or a socket's path`},
	} {
		r := runLmx(t, c.args...)
		assert.Equal(t, exitUsage, r.code, "lmx %v: %s", c.args, r.stderr)
		assert.Contains(t, r.stderr, c.want, "lmx %v", c.args)
		assert.NotContains(t, r.stderr, "ulid", "lmx %v", c.args)
	}
	for _, cmd := range []string{"start", "acquire", "extend", "release", "run", "ls", "inspect", "watch", "ping", "stats", "healthcheck", "version"} {
		out := must(t, cmd, "--help")
		assert.Contains(t, out, "Usage: lmx "+cmd, cmd)
		assert.Contains(t, out, "Exit codes:", cmd)
		assert.Equal(t, out, must(t, "help", cmd))
	}
	out := must(t, "--help")
	for _, want := range []string{"acquire KEY", "6  run: the lease was lost", "XDG_RUNTIME_DIR"} {
		assert.Contains(t, out, want)
	}
	start := must(t, "start", "-h")
	for _, env := range []string{"LMX_BROKER_LISTEN", "LMX_BROKER_TOKEN", "LMX_BROKER_METRICS", "LMX_BROKER_TLS_CERT", "LMX_BROKER_LOG_FORMAT", "LMX_BROKER_LOG_LEVEL"} {
		assert.Contains(t, start, "$"+env, env)
	}
	assert.Contains(t, must(t, "acquire", "--help"), "(default 30s)")
}
