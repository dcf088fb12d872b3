package chaos

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// An lmConn is a live-mutex NDJSON connection to the broker's live-mutex
// door, as a Go driver would use it: one request at a time. live-mutex
// answers an unlock of a lock its connection lost to a TTL or a force with
// unlocked:true, as if it had held; so the workers on this door lock only
// the clean keys, without TTL, where nothing but a broker restart ends a
// lock, and that ends the connection too.
type lmConn struct {
	nc   net.Conn
	r    *bufio.Reader
	name string
	n    int
}

func dialLiveMutex(path, name string) (*lmConn, error) {
	nc, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return nil, err
	}
	return &lmConn{nc: nc, r: bufio.NewReader(nc), name: name}, nil
}

// lmReply is what the workers read of the door's replies.
type lmReply struct {
	Type     string `json:"type"`
	UUID     string `json:"uuid"`
	Acquired bool   `json:"acquired"`
	Unlocked bool   `json:"unlocked"`
	Token    string `json:"fencingTokenString"`
	Warning  string `json:"warning"`
	Error    string `json:"error"`
}

func (c *lmConn) uuid() string {
	c.n++
	return c.name + "-" + strconv.Itoa(c.n)
}

// send writes one request and reads replies until one of its type answers
// uuid and done says it is the last.
func (c *lmConn) send(req map[string]any, done func(*lmReply) bool) (*lmReply, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	c.nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.nc.Write(append(b, '\n')); err != nil {
		return nil, err
	}
	for {
		line, err := c.r.ReadBytes('\n')
		if err != nil {
			return nil, err
		}
		var rep lmReply
		if json.Unmarshal(line, &rep) != nil || rep.UUID != req["uuid"] || rep.Type != req["type"] {
			continue
		}
		if done(&rep) {
			return &rep, nil
		}
	}
}

// lock waits for key, with max as its semaphore limit, and returns the
// lock's uuid and fencing token.
func (c *lmConn) lock(key string, max int) (string, uint64, error) {
	id := c.uuid()
	rep, err := c.send(map[string]any{"type": "lock", "uuid": id, "key": key, "ttl": nil, "max": max},
		func(r *lmReply) bool { return r.Acquired || r.Error != "" })
	if err != nil {
		return "", 0, err
	}
	if !rep.Acquired {
		return "", 0, errors.New(rep.Error)
	}
	token, err := strconv.ParseUint(rep.Token, 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("fencingTokenString %q: %w", rep.Token, err)
	}
	return id, token, nil
}

// unlock unlocks the lock id of key and says how it went.
func (c *lmConn) unlock(key, id string) Outcome {
	rep, err := c.send(map[string]any{"type": "unlock", "uuid": c.uuid(), "key": key, "_uuid": id},
		func(*lmReply) bool { return true })
	switch {
	case err != nil:
		return Lost
	case rep.Unlocked && rep.Warning == "":
		return Released
	}
	return NotHeld
}
