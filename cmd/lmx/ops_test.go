//go:build unix

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// waiters reports the requests queued for key.
func (b *broker) waiters(t *testing.T, key string) int {
	t.Helper()
	var info infoOut
	require.NoError(t, json.Unmarshal([]byte(must(t, b.args("inspect", key, "--json")...)), &info))
	return len(info.Waiters)
}

// gone reports whether process pid has exited: it no longer exists, or is
// a zombie nobody has reaped yet.
func gone(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return true
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return os.IsNotExist(err)
	}
	_, after, _ := strings.Cut(string(stat), ") ")
	return strings.HasPrefix(after, "Z")
}

// TestRunKillsProcessGroup: a lease lost kills what the command started,
// not only the command: the `sh -c 'sleep 299'` that outlived a forced
// release.
func TestRunKillsProcessGroup(t *testing.T) {
	b := newBroker(t)
	pidFile := filepath.Join(shortDir(t), "pid")
	script := `sleep 299 & echo $! > "$0"; echo ready; wait`
	p := spawn(t, nil, b.args("run", "group", "--", "sh", "-c", script, pidFile)...)
	p.waitOut(t, "ready")
	data, err := os.ReadFile(pidFile)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	require.NoError(t, err)
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	require.False(t, gone(pid), "the command's child is not running")

	must(t, b.args("release", "group", "--force")...)
	require.Equal(t, exitLeaseLost, p.wait(t), "stderr: %s", p.stderr)
	eventually(t, "the command's child is killed", func() bool { return gone(pid) })
}

// TestInterruptedWhileWaiting: a signal while lmx still waits for a lock
// exits 128+N, as a shell reports it, and leaves no request queued.
func TestInterruptedWhileWaiting(t *testing.T) {
	b := newBroker(t)
	must(t, b.args("acquire", "busy", "--ttl", "1m")...)
	for _, c := range []struct {
		args []string
		sig  syscall.Signal
		name string
	}{
		{[]string{"run", "busy", "--", "true"}, syscall.SIGINT, "SIGINT"},
		{[]string{"run", "busy", "--", "true"}, syscall.SIGTERM, "SIGTERM"},
		{[]string{"acquire", "busy", "--wait", "forever"}, syscall.SIGINT, "SIGINT"},
	} {
		p := spawn(t, nil, b.args(c.args...)...)
		eventually(t, "lmx waits for the lock", func() bool { return b.waiters(t, "busy") == 1 })
		p.signal(t, c.sig)
		require.Equal(t, 128+int(c.sig), p.wait(t), "lmx %v: stderr: %s", c.args, p.stderr)
		assert.Contains(t, p.stderr.String(), "interrupted by "+c.name)
		assert.Equal(t, 0, b.waiters(t, "busy"), "lmx %v left its request queued", c.args)
		assert.Equal(t, 1, b.holders(t, "busy"))
	}
}

// TestConflictExitCode: --conflict-exit-code, as flock -E, tells a lock not
// taken from a command's own status 3 or 4.
func TestConflictExitCode(t *testing.T) {
	b := newBroker(t)
	must(t, b.args("acquire", "busy", "--ttl", "1m")...)
	mustFail(t, 75, b.args("run", "busy", "--try", "--conflict-exit-code", "75", "--", "true")...)
	mustFail(t, 75, b.args("run", "busy", "--wait", "100ms", "--conflict-exit-code", "75", "--", "true")...)
	mustFail(t, 75, b.args("acquire", "busy", "--conflict-exit-code", "75")...)
	mustFail(t, 75, b.args("acquire", "busy", "--wait", "100ms", "--conflict-exit-code", "75")...)
	mustFail(t, exitLocked, b.args("acquire", "busy")...)
	// The command's own 3 passes through.
	mustFail(t, 3, b.args("run", "free", "--conflict-exit-code", "75", "--", "sh", "-c", "exit 3")...)
}

// TestAcquireWaitForever: --wait forever waits as long as it takes, as
// etcdctl lock does, and gets the lock when it is released.
func TestAcquireWaitForever(t *testing.T) {
	b := newBroker(t)
	id := strings.TrimSpace(must(t, b.args("acquire", "-q", "deploy", "--ttl", "1m")...))
	p := spawn(t, nil, b.args("acquire", "-q", "deploy", "--wait", "forever")...)
	eventually(t, "acquire waits", func() bool { return b.waiters(t, "deploy") == 1 })
	must(t, b.args("release", "deploy", id)...)
	require.Equal(t, 0, p.wait(t), "stderr: %s", p.stderr)
	next := strings.TrimSpace(p.stdout.String())
	assert.Regexp(t, `^[0-9A-Z]{26}$`, next)
	assert.NotEqual(t, id, next)
}

// TestExtend: lmx extend renews a lease acquire took, by its id, from
// another process; the broker's expiry is the one extend prints.
func TestExtend(t *testing.T) {
	b := newBroker(t)
	id := strings.TrimSpace(must(t, b.args("acquire", "-q", "deploy", "--ttl", "10s")...))
	var ext leaseOut
	out := must(t, b.args("extend", "deploy", id, "--ttl", "1h", "--json")...)
	require.NoError(t, json.Unmarshal([]byte(out), &ext), out)
	require.NotNil(t, ext.Expires, out)
	assert.Equal(t, id, ext.ID)
	assert.Greater(t, time.Until(*ext.Expires), 50*time.Minute)

	var info infoOut
	require.NoError(t, json.Unmarshal([]byte(must(t, b.args("inspect", "deploy", "--json")...)), &info))
	require.Len(t, info.Holders, 1)
	assert.Equal(t, ext.Expires.UnixMilli(), info.Holders[0].Expires.UnixMilli())

	assert.Contains(t, must(t, b.args("extend", "deploy", id)...), "extended deploy "+id)
	r := mustFail(t, exitError, b.args("extend", "deploy", "01KBVZ3W5R8Q2M0XJ4T6N7PAYC")...)
	assert.Contains(t, r.stderr, "deploy is not held with id 01KBVZ3W5R8Q2M0XJ4T6N7PAYC")
}

// TestJSONTokensAreStrings: fencing tokens exceed 2^53, past what jq and
// JavaScript hold exactly in a number, so JSON carries them as strings.
func TestJSONTokensAreStrings(t *testing.T) {
	b := newBroker(t)
	w := spawn(t, nil, b.args("watch", "--json")...)
	w.waitErr(t, "watching")
	out := must(t, b.args("acquire", "k", "--json")...)
	inspect := must(t, b.args("inspect", "k", "--json")...)
	event := w.waitLines(t, 1)[0]

	token := regexp.MustCompile(`"token":"(\d+)"`)
	var tokens []string
	for _, line := range []string{out, inspect, event} {
		m := token.FindStringSubmatch(line)
		require.NotNil(t, m, "no token as a string in %s", line)
		tokens = append(tokens, m[1])
	}
	assert.Equal(t, tokens[0], tokens[1])
	assert.Equal(t, tokens[0], tokens[2])
	n, err := strconv.ParseUint(tokens[0], 10, 64)
	require.NoError(t, err)
	assert.Greater(t, n, uint64(1)<<53, "a token a float64 would round")

	var l leaseOut
	require.NoError(t, json.Unmarshal([]byte(out), &l))
	assert.Equal(t, n, l.Token)
}

// TestAddrBarePath: a bare path in LMX_ADDR is a Unix socket's.
func TestAddrBarePath(t *testing.T) {
	b := newBroker(t)
	path := strings.TrimPrefix(b.addr, "unix://")
	r := runLmxEnv(t, baseEnv("LMX_ADDR="+path), "ping")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, path+": connected")
}
