package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// liveMutexScript starts live-mutex's own broker on the Unix socket named by
// its first argument, says "ready" when it listens, and exits when its
// stdin closes.
const liveMutexScript = `
const {Broker} = require('live-mutex');
const b = new Broker({udsPath: process.argv[1]});
b.ensure().then(() => console.log('ready'), (e) => { console.error(e); process.exit(1); });
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
`

// liveMutexService is live-mutex 0.2.25's Node broker on a Unix socket,
// driven over its NDJSON protocol, one connection per worker.
type liveMutexService struct {
	ch   *child
	path string
}

func startLiveMutex(ctx context.Context, cfg config) (running, error) {
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, fmt.Errorf("%w: node not installed", errUnavailable)
	}
	dir, err := filepath.Abs(cfg.nodeDir)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "live-mutex", "package.json")); err != nil {
		return nil, fmt.Errorf("%w: live-mutex not installed in %s/node_modules (npm install --ignore-scripts live-mutex@0.2.25)", errUnavailable, dir)
	}
	tmp, err := os.MkdirTemp("", "lmxbench")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(tmp, "lm.sock")
	cmd := exec.Command(node, "-e", liveMutexScript, path)
	cmd.Dir = dir
	ch, err := startChild(ctx, cmd, tmp, func(line string) bool { return line == "ready" }, nil)
	if err != nil {
		return nil, err
	}
	return &liveMutexService{ch: ch, path: path}, nil
}

func (s *liveMutexService) newWorker(ctx context.Context, w int) (worker, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", s.path)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	lw := &lmWorker{nc: nc, r: bufio.NewReaderSize(nc, 16<<10), enc: json.NewEncoder(nc), w: w}
	// The handshake: a compatible version gets no reply.
	if _, err := nc.Write([]byte(`{"type":"version","value":"0.2.25"}` + "\n")); err != nil {
		nc.Close()
		return nil, err
	}
	return lw, nil
}

func (s *liveMutexService) rss() string { return s.ch.rss() + " (node)" }
func (s *liveMutexService) close()      { s.ch.stop() }

type lmWorker struct {
	nc  net.Conn
	r   *bufio.Reader
	enc *json.Encoder // writes a frame and its newline in one Write
	w   int
	seq int
}

// lmPid is this process's id, which live-mutex requests carry.
var lmPid = os.Getpid()

type lmFrame struct {
	Type       string `json:"type"`
	UUID       string `json:"uuid"`
	Acquired   bool   `json:"acquired"`
	Unlocked   bool   `json:"unlocked"`
	Reelection bool   `json:"reelection"`
	Error      string `json:"error"`
}

func (w *lmWorker) id() string {
	w.seq++
	return strconv.Itoa(w.w) + "-" + strconv.Itoa(w.seq)
}

func (w *lmWorker) send(v map[string]any) error { return w.enc.Encode(v) }

// await reads frames until one of type typ and uuid id that is final.
func (w *lmWorker) await(typ, id string, final func(lmFrame) (bool, error)) error {
	for {
		line, err := w.r.ReadBytes('\n')
		if err != nil {
			return err
		}
		var f lmFrame
		if json.Unmarshal(line, &f) != nil || f.Type != typ || f.UUID != id {
			continue
		}
		done, err := final(f)
		if err != nil || done {
			return err
		}
	}
}

func (w *lmWorker) cycle(_ context.Context, key string) (time.Duration, error) {
	t := time.Now()
	lid := w.id()
	lock := map[string]any{"type": "lock", "uuid": lid, "key": key, "ttl": 7050, "max": nil,
		"retryCount": 0, "rwStatus": nil, "pid": lmPid, "keepLocksAfterDeath": false}
	if err := w.send(lock); err != nil {
		return 0, err
	}
	retries := 0
	err := w.await("lock", lid, func(f lmFrame) (bool, error) {
		if f.Error != "" {
			return false, errors.New("live-mutex lock: " + f.Error)
		}
		if f.Reelection {
			// The broker asks the client to ask again.
			retries++
			lock["retryCount"] = retries
			return false, w.send(lock)
		}
		return f.Acquired, nil
	})
	if err != nil {
		return 0, err
	}
	d := time.Since(t)
	if err := w.send(map[string]any{"type": "lock-received", "uuid": lid, "key": key}); err != nil {
		return 0, err
	}
	uid := w.id()
	if err := w.send(map[string]any{"type": "unlock", "uuid": uid, "_uuid": lid, "key": key, "force": false,
		"rwStatus": nil, "pid": lmPid, "keepLocksAfterDeath": false, "max": nil}); err != nil {
		return 0, err
	}
	err = w.await("unlock", uid, func(f lmFrame) (bool, error) {
		if !f.Unlocked {
			return false, errors.New("live-mutex unlock: " + f.Error)
		}
		return true, nil
	})
	return d, err
}

func (w *lmWorker) close() { w.nc.Close() }
