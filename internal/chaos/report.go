package chaos

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The workers report to the checker over a Unix socket, one line a report
// and one line its answer, so that a worker goes on only once the checker
// has taken its report in:
//
//	E worker key token shared  →  holder id
//	X id                       →  ok
//	U id outcome               →  ok
//	S who end d                →  ok   (a stall: see Stalled; end in Unix ns, d in ns)
//
// An answer starting with "!" is an error.

// serveChecker answers reports on l until it is closed.
func serveChecker(l net.Listener, c *Checker, wg *sync.WaitGroup) {
	var conns sync.WaitGroup
	defer wg.Done()
	defer conns.Wait()
	for {
		nc, err := l.Accept()
		if err != nil {
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer nc.Close()
			r, w := bufio.NewReader(nc), bufio.NewWriter(nc)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				w.WriteString(answer(c, strings.Fields(line)) + "\n")
				if w.Flush() != nil {
					return
				}
			}
		}()
	}
}

// answer applies one report to c.
func answer(c *Checker, f []string) string {
	var err error
	switch {
	case len(f) == 5 && f[0] == "E":
		var token uint64
		token, err = strconv.ParseUint(f[3], 10, 64)
		if err == nil {
			var id int
			id, err = c.Enter(f[1], f[2], token, f[4] == "1")
			if err == nil {
				return strconv.Itoa(id)
			}
		}
	case len(f) == 2 && f[0] == "X":
		var id int
		if id, err = strconv.Atoi(f[1]); err == nil {
			err = c.Exit(id)
		}
	case len(f) == 3 && f[0] == "U":
		var id int
		if id, err = strconv.Atoi(f[1]); err == nil {
			err = c.Unlocked(id, Outcome(f[2]))
		}
	case len(f) == 4 && f[0] == "S":
		var end, d int64
		if end, err = strconv.ParseInt(f[2], 10, 64); err == nil {
			if d, err = strconv.ParseInt(f[3], 10, 64); err == nil {
				c.Stalled(f[1], time.Unix(0, end), time.Duration(d))
			}
		}
	default:
		err = fmt.Errorf("malformed report %q", strings.Join(f, " "))
	}
	if err != nil {
		return "! " + err.Error()
	}
	return "ok"
}

// A reporter is a worker goroutine's line to the checker.
type reporter struct {
	worker string
	nc     net.Conn
	r      *bufio.Reader
}

func dialChecker(path, worker string) (*reporter, error) {
	nc, err := net.Dial("unix", path)
	if err != nil {
		return nil, err
	}
	return &reporter{worker: worker, nc: nc, r: bufio.NewReader(nc)}, nil
}

func (r *reporter) ask(format string, args ...any) (string, error) {
	if _, err := fmt.Fprintf(r.nc, format+"\n", args...); err != nil {
		return "", err
	}
	line, err := r.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSpace(line)
	if strings.HasPrefix(line, "!") {
		return "", errors.New("checker: " + strings.TrimSpace(line[1:]))
	}
	return line, nil
}

func (r *reporter) enter(key string, token uint64, shared bool) (int, error) {
	s := "0"
	if shared {
		s = "1"
	}
	a, err := r.ask("E %s %s %d %s", r.worker, key, token, s)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(a)
}

func (r *reporter) exit(id int) error {
	_, err := r.ask("X %d", id)
	return err
}

func (r *reporter) unlocked(id int, o Outcome) error {
	_, err := r.ask("U %d %s", id, o)
	return err
}

func (r *reporter) stalled(end time.Time, d time.Duration) error {
	_, err := r.ask("S %s %d %d", r.worker, end.UnixNano(), int64(d))
	return err
}

func (r *reporter) close() { r.nc.Close() }
