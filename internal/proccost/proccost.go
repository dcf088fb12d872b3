// Package proccost reads what the running process has cost so far: its CPU
// time and its read and write system calls, for benchmarks to report per
// operation: costs that the machine's load moves far less than the time an
// operation takes.
package proccost

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A Cost is what the process has used since it started.
type Cost struct {
	CPU           time.Duration // user and system
	Reads, Writes int64         // read and write system calls (Linux's /proc/self/io)
}

// Sub is c less the earlier reading d.
func (c Cost) Sub(d Cost) Cost {
	return Cost{CPU: c.CPU - d.CPU, Reads: c.Reads - d.Reads, Writes: c.Writes - d.Writes}
}

// Self reads the process's cost; it fails where /proc/self/io is missing.
func Self() (Cost, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return Cost{}, fmt.Errorf("getrusage: %w", err)
	}
	c := Cost{CPU: time.Duration(ru.Utime.Nano() + ru.Stime.Nano())}
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return Cost{}, err
	}
	for line := range strings.Lines(string(data)) {
		name, v, _ := strings.Cut(line, ": ")
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch name {
		case "syscr":
			c.Reads = n
		case "syscw":
			c.Writes = n
		}
	}
	return c, nil
}

// Report starts counting what b's run costs; the function it returns
// reports the CPU time and the read and write system calls per b.N, as
// cpu-µs/unit, reads/unit and writes/unit. Where the process's cost cannot
// be read, b is skipped.
func Report(b *testing.B, unit string) func() {
	start, err := Self()
	if err != nil {
		b.Skip(err)
	}
	return func() {
		c, err := Self()
		if err != nil {
			b.Fatal(err)
		}
		c, n := c.Sub(start), float64(b.N)
		b.ReportMetric(float64(c.CPU)/1e3/n, "cpu-µs/"+unit)
		b.ReportMetric(float64(c.Reads)/n, "reads/"+unit)
		b.ReportMetric(float64(c.Writes)/n, "writes/"+unit)
	}
}
