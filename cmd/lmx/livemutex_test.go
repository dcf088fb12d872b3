package main

import (
	"bufio"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestStartLiveMutex: `lmx start --listen livemutex+tcp://...` serves
// live-mutex's NDJSON protocol on the same table as the native socket.
func TestStartLiveMutex(t *testing.T) {
	sock := filepath.Join(shortDir(t), "lmx.sock")
	b := startBroker(t, nil, "--listen", "unix://"+sock, "--listen", "livemutex+tcp://127.0.0.1:0")
	require.Len(t, b.urls, 2)
	addr, ok := strings.CutPrefix(b.urls[1], "livemutex+tcp://")
	require.True(t, ok, b.urls[1])
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = nc.Write([]byte(`{"type":"lock","uuid":"L1","key":"lmkey","ttl":null}` + "\n"))
	require.NoError(t, err)
	line, err := bufio.NewReader(nc).ReadString('\n')
	require.NoError(t, err)
	assert.Contains(t, line, `"acquired":true`)
	assert.Equal(t, 1, b.holders(t, "lmkey"))

	r := mustFail(t, exitUsage, "start", "--listen", "livemutex+ftp://x")
	assert.Contains(t, r.stderr, "--listen")
}
