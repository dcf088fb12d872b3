package lmx_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// These tests drive the real live-mutex Node client (npm live-mutex@0.2.25,
// installed into testdata/livemutex/node_modules by .ci/run) against an lmx
// broker, through testdata/livemutex/scenario.js.

const lmDir = "testdata/livemutex"

// needNode skips, or under CI fails, when node or the npm package is missing.
func needNode(t testing.TB) string {
	t.Helper()
	node, err := exec.LookPath("node")
	missing := ""
	if err != nil {
		missing = "node is not on PATH"
	} else if _, err := os.Stat(filepath.Join(lmDir, "node_modules", "live-mutex", "package.json")); err != nil {
		missing = "live-mutex is not installed: run `npm install --no-save --ignore-scripts live-mutex@0.2.25` in " + lmDir
	}
	if missing != "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("live-mutex compatibility tests need Node: %s", missing)
		}
		t.Skip(missing)
	}
	return node
}

// lmNodeBroker returns a broker serving live-mutex on a Unix socket.
func lmNodeBroker(t testing.TB) (*lmx.Broker, string) {
	t.Helper()
	b := lmBroker(t, nil)
	path := socketPath(t)
	_, err := b.ListenLiveMutex("unix", path)
	require.NoError(t, err)
	return b, path
}

// startScenario starts a long-running scenario, killed at cleanup, and
// returns it with its stdout.
func startScenario(t testing.TB, node, uds, name string) (*exec.Cmd, io.Reader) {
	t.Helper()
	cmd := exec.Command(node, "scenario.js", name)
	cmd.Dir = lmDir
	cmd.Env = append(os.Environ(), "LMX_UDS="+uds)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, stdout
}

// runScenario runs one scenario to its end and returns its result lines.
func runScenario(t testing.TB, node, uds, name string, env ...string) []map[string]any {
	t.Helper()
	// The scenario's own timer ends a stuck run; both bounds leave room for
	// a machine that other test binaries keep busy (go test runs packages
	// side by side), where the bench scenario ran at a fifth of its speed.
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "scenario.js", name)
	cmd.Dir = lmDir
	cmd.Env = append(os.Environ(), append(env, "LMX_UDS="+uds, "LMX_TIMEOUT_MS=100000")...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	outp, err := cmd.Output()
	require.NoError(t, err, "scenario %s: stdout %s\nstderr %s", name, outp, stderr.String())
	var res []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(string(outp)), "\n") {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &m), "line %q", line)
		require.Nil(t, m["error"], "scenario %s failed: %v", name, m["error"])
		res = append(res, m)
	}
	return res
}

func TestLiveMutexNode(t *testing.T) {
	node := needNode(t)
	_, uds := lmNodeBroker(t)
	cases := []struct {
		name  string
		check func(t *testing.T, res []map[string]any)
	}{
		{"basic", func(t *testing.T, res []map[string]any) {
			require.Len(t, res, 2)
			assert.Equal(t, true, res[0]["acquired"])
			assert.Equal(t, "basic", res[0]["key"])
			assert.Equal(t, true, res[1]["unlocked"])
		}},
		{"fifo", func(t *testing.T, res []map[string]any) {
			assert.Equal(t, []any{0.0, 1.0, 2.0, 3.0, 4.0}, res[0]["order"])
		}},
		{"semaphore", func(t *testing.T, res []map[string]any) {
			assert.Equal(t, 3.0, res[0]["peak"])
			assert.Equal(t, 12.0, res[0]["done"])
		}},
		{"wrongid", func(t *testing.T, res []map[string]any) {
			assert.Equal(t, true, res[0]["refused"], "%v", res[0])
			assert.Equal(t, true, res[1]["unlocked"])
		}},
		{"force", func(t *testing.T, res []map[string]any) {
			assert.Equal(t, true, res[0]["acquired"])
		}},
		{"ttl", func(t *testing.T, res []map[string]any) {
			assert.Equal(t, true, res[0]["acquired"])
			assert.InDelta(t, 300, res[0]["waitedMs"], 250)
		}},
		{"disconnect", func(t *testing.T, res []map[string]any) {
			assert.Equal(t, true, res[0]["acquired"])
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { tc.check(t, runScenario(t, node, uds, tc.name)) })
	}
}

// TestLiveMutexNodeAndGoContend: a Go lease and a Node lock on one key
// exclude each other and queue in one FIFO queue.
func TestLiveMutexNodeAndGoContend(t *testing.T) {
	node := needNode(t)
	b, uds := lmNodeBroker(t)
	ctx := context.Background()
	l, err := b.Lock(ctx, "gk")
	require.NoError(t, err)

	cmd, stdout := startScenario(t, node, uds, "contend")
	lines := bufio.NewScanner(stdout)
	next := func() map[string]any {
		require.True(t, lines.Scan(), "node ended early: %v", lines.Err())
		var m map[string]any
		require.NoError(t, json.Unmarshal(lines.Bytes(), &m))
		require.Nil(t, m["error"])
		return m
	}
	assert.Equal(t, true, next()["asking"])
	require.Eventually(t, func() bool {
		ki, _ := b.Inspect(ctx, "gk")
		return len(ki.Waiters) == 1
	}, 10*time.Second, time.Millisecond)
	require.NoError(t, l.Unlock(ctx))
	assert.Equal(t, true, next()["granted"])
	_, err = b.TryLock(ctx, "gk")
	require.ErrorIs(t, err, lmx.ErrLocked) // Node holds it
	l2, err := b.Lock(ctx, "gk")           // queued behind Node's hold
	require.NoError(t, err)
	assert.Equal(t, true, next()["released"])
	require.NoError(t, l2.Unlock(ctx))
	require.NoError(t, cmd.Wait())
}

// TestLiveMutexNodeCycles is live-mutex's headline run as a test: 10,000
// cycles, 20 in flight, on one key.
func TestLiveMutexNodeCycles(t *testing.T) {
	node := needNode(t)
	_, uds := lmNodeBroker(t)
	res := runScenario(t, node, uds, "bench")
	assert.Equal(t, 10000.0, res[0]["cycles"])
	t.Logf("lmx broker, live-mutex Node client: %v cycles/s", res[0]["perSecond"])
}

// BenchmarkLiveMutexHeadline measures live-mutex's headline (10,000 cycles,
// 20 in flight, one key, the Node client over a Unix socket) against
// live-mutex's own 0.2.25 broker and against an lmx broker, in one run:
//
//	go test -run '^$' -bench LiveMutexHeadline -benchtime 3x .
func BenchmarkLiveMutexHeadline(b *testing.B) {
	node := needNode(b)
	benchBothBrokers(b, node, func(b *testing.B, uds string) float64 {
		return runScenario(b, node, uds, "bench")[0]["perSecond"].(float64)
	})
}

// BenchmarkLiveMutexRawHeadline is the same headline with a Go NDJSON load
// generator instead of the Node client, which is most of the cost above:
//
//	go test -run '^$' -bench LiveMutexRawHeadline -benchtime 3x .
func BenchmarkLiveMutexRawHeadline(b *testing.B) {
	benchBothBrokers(b, needNode(b), func(b *testing.B, uds string) float64 {
		return rawCycles(b, uds, 10000, 20)
	})
}

// benchBothBrokers runs cycles, which returns cycles per second, against
// live-mutex's own broker and against an lmx broker, and reports the mean.
func benchBothBrokers(b *testing.B, node string, cycles func(b *testing.B, uds string) float64) {
	run := func(b *testing.B, uds string) {
		var sum float64
		n := 0
		for b.Loop() {
			sum += cycles(b, uds)
			n++
		}
		b.ReportMetric(sum/float64(n), "cycles/s")
	}
	b.Run("broker=live-mutex", func(b *testing.B) {
		uds := socketPath(b)
		_, stdout := startScenario(b, node, uds, "broker")
		line, err := bufio.NewReader(stdout).ReadString('\n')
		require.NoError(b, err)
		require.Contains(b, line, "ready")
		run(b, uds)
	})
	b.Run("broker=lmx", func(b *testing.B) {
		_, uds := lmNodeBroker(b)
		run(b, uds)
	})
}

// rawCycles runs cycles lock+unlock cycles on one key, inflight at once,
// over one connection, and returns cycles per second.
func rawCycles(tb testing.TB, uds string, cycles, inflight int) float64 {
	nc, err := net.Dial("unix", uds)
	require.NoError(tb, err)
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(60 * time.Second))
	br, bw := bufio.NewReader(nc), bufio.NewWriter(nc)
	started, done, seq := 0, 0, 0
	lock := func() {
		seq++
		started++
		fmt.Fprintf(bw, `{"type":"lock","uuid":"l%d","key":"bench","ttl":7050,"max":null,"retryCount":0}`+"\n", seq)
	}
	t0 := time.Now()
	for range inflight {
		lock()
	}
	for done < cycles {
		if br.Buffered() == 0 {
			require.NoError(tb, bw.Flush())
		}
		line, err := br.ReadBytes('\n')
		require.NoError(tb, err)
		var m struct {
			Type     string `json:"type"`
			UUID     string `json:"uuid"`
			Acquired bool   `json:"acquired"`
			Unlocked bool   `json:"unlocked"`
		}
		require.NoError(tb, json.Unmarshal(line, &m))
		switch {
		case m.Type == "lock" && m.Acquired:
			fmt.Fprintf(bw, `{"type":"lock-received","uuid":%q,"key":"bench"}`+"\n", m.UUID)
			fmt.Fprintf(bw, `{"type":"unlock","uuid":"u%s","_uuid":%q,"key":"bench","force":false}`+"\n", m.UUID, m.UUID)
		case m.Type == "unlock":
			require.True(tb, m.Unlocked, "%s", line)
			done++
			if started < cycles {
				lock()
			}
		}
	}
	return float64(cycles) / time.Since(t0).Seconds()
}
