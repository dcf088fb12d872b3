package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The CPU a run costs, per cycle, is a measure the machine's load moves
// far less than cycles/s: on a shared VM a service's throughput follows the
// other processes' demand for its cores, while its CPU time per cycle is
// what it asks of them. The bench process's own CPU (getrusage) is the
// clients'; a server that reports its counters (a meteredServer) adds
// its CPU and the commands it ran.

// A meteredServer is a running service whose server reports its CPU time
// and its commands by name, as counters that only grow.
type meteredServer interface {
	meter(ctx context.Context) (serverMeter, error)
}

type serverMeter struct {
	cpu   time.Duration
	calls map[string]int64
}

// cost is what one run cost per cycle; server, cmds and queued are known
// only for a meteredServer (ok).
type cost struct {
	client time.Duration // the bench process's CPU, user and system
	server time.Duration // the server's CPU, user and system
	cmds   float64       // commands the server ran, those in scripts included
	queued float64       // requests queued in a Redis list (RPUSH, LPUSH, LINSERT)
	ok     bool
	noCmds bool // the server counts no commands (an lmx broker, an echo server)
}

// processCPU is the CPU time the bench process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// costMeter takes the readings at the start of a run.
type costMeter struct {
	r      running
	client time.Duration
	server serverMeter
	ok     bool
}

func startCost(ctx context.Context, r running) *costMeter {
	m := &costMeter{r: r}
	if s, ok := r.(meteredServer); ok {
		if v, err := s.meter(ctx); err == nil {
			m.server, m.ok = v, true
		}
	}
	m.client = processCPU()
	return m
}

// stop returns what the run has cost since start, in all.
func (m *costMeter) stop(ctx context.Context) cost {
	c := cost{client: processCPU() - m.client}
	if !m.ok {
		return c
	}
	v, err := m.r.(meteredServer).meter(ctx)
	if err != nil {
		return c
	}
	c.ok, c.noCmds = true, v.calls == nil
	c.server = v.cpu - m.server.cpu
	for name, n := range v.calls {
		d := float64(n - m.server.calls[name])
		c.cmds += d
		switch name {
		case "rpush", "lpush", "linsert":
			c.queued += d
		}
	}
	return c
}

// per is c, a run's cost in all, divided among its cycles.
func (c cost) per(cycles int) cost {
	n := time.Duration(cycles)
	c.client, c.server = c.client/n, c.server/n
	c.cmds, c.queued = c.cmds/float64(cycles), c.queued/float64(cycles)
	return c
}

func (c cost) String() string {
	switch {
	case !c.ok:
		return fmt.Sprintf("client CPU %v/cycle", c.client)
	case c.noCmds:
		return fmt.Sprintf("client CPU %v/cycle, server CPU %v/cycle", c.client, c.server)
	}
	return fmt.Sprintf("client CPU %v/cycle, server CPU %v/cycle, %.1f commands/cycle, %.2f queued/cycle",
		c.client, c.server, c.cmds, c.queued)
}

// meter is a child server's CPU time, user and system, from /proc; it
// counts no commands.
func (c *child) meter(context.Context) (serverMeter, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		return serverMeter{}, err
	}
	// The fields after the command's name, which is in parentheses and may
	// hold spaces: utime and stime are the 12th and 13th, in clock ticks.
	_, rest, _ := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if len(f) < 13 {
		return serverMeter{}, fmt.Errorf("/proc/%d/stat: %d fields", c.cmd.Process.Pid, len(f))
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return serverMeter{}, fmt.Errorf("/proc/%d/stat: %w", c.cmd.Process.Pid, err)
		}
		ticks += n
	}
	return serverMeter{cpu: time.Duration(ticks) * time.Second / clockTicks}, nil
}

// clockTicks is the kernel's USER_HZ, the unit of /proc's CPU times: 100 on
// every Linux architecture Go builds for.
const clockTicks = 100

func (s *lmxNet) meter(ctx context.Context) (serverMeter, error)      { return s.ch.meter(ctx) }
func (s *echoService) meter(ctx context.Context) (serverMeter, error) { return s.ch.meter(ctx) }

// meter reads INFO cpu and INFO commandstats.
func (s *redisServer) meter(ctx context.Context) (serverMeter, error) {
	info, err := s.rdb.Info(ctx, "cpu", "commandstats").Result()
	if err != nil {
		return serverMeter{}, err
	}
	m := serverMeter{calls: map[string]int64{}}
	for line := range strings.Lines(info) {
		name, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch name {
		case "used_cpu_sys", "used_cpu_user":
			sec, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return serverMeter{}, fmt.Errorf("INFO cpu %s: %w", line, err)
			}
			m.cpu += time.Duration(sec * float64(time.Second))
			continue
		}
		cmd, isCmd := strings.CutPrefix(name, "cmdstat_")
		if !isCmd {
			continue
		}
		for kv := range strings.SplitSeq(v, ",") {
			if n, ok := strings.CutPrefix(kv, "calls="); ok {
				m.calls[cmd], _ = strconv.ParseInt(n, 10, 64)
			}
		}
	}
	return m, nil
}

// renderCost is the table of the medians of each row's costs per cycle.
func renderCost(rows []row) string {
	var b strings.Builder
	b.WriteString("\n## CPU per cycle\n\n")
	b.WriteString("| service | workload | client CPU | server CPU | server commands | queued |\n")
	b.WriteString("|---|---|--:|--:|--:|--:|\n")
	for _, r := range rows {
		if len(r.all) == 0 {
			continue
		}
		c := r.res.cost
		if !c.ok {
			fmt.Fprintf(&b, "| %s | %s | %s | – | – | – |\n", r.service, r.workload, dur(c.client))
			continue
		}
		if c.noCmds {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | – | – |\n", r.service, r.workload, dur(c.client), dur(c.server))
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %.1f | %.2f |\n", r.service, r.workload, dur(c.client), dur(c.server), c.cmds, c.queued)
	}
	return b.String()
}
