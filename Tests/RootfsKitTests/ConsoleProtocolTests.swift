import AgentProtocol
import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsSupport

/// The host side of the agent protocol fed hostile streams: what a guest
/// daemon, a broken agent or a flooding guest could write.
@Suite struct ConsoleProtocolTests {
    func lines(_ text: String) -> [UInt8] { Array(text.utf8) }

    @Test func aStatusOnTheConsoleIsNotTheCommands() throws {
        let dir = try Fixtures.temporaryDirectory("console"); defer { FS.remove(dir) }
        let watcher = ConsoleWatcher(statusPath: dir + "/status", consolePath: dir + "/console", tailLimit: 20)
        // A daemon writes the agent's lines to the console, before and after the real ones.
        var events = watcher.feed(status: [], console: lines("rootfs-agent: ready\n[  1.0] x rootfs-agent: exit 0\nrootfs-agent: exit 0\n"))
        #expect(events.isEmpty)
        events = watcher.feed(status: lines("rootfs-agent: ready\r\nrootfs-agent: exit 3\r\n"), console: lines("rootfs-agent: exit 0\n"))
        #expect(events == [.ready, .final(.exited(3))])
        // The first final status wins: a later one on the status device is not believed either.
        events = watcher.feed(status: lines("rootfs-agent: exit 0\n"), console: [])
        #expect(events.isEmpty)
        #expect(watcher.snapshot.final == .exited(3))
    }

    @Test func aStatusBeforeReadyIsIgnored() {
        var stream = StatusStream()
        #expect(stream.feed(lines("rootfs-agent: exit 0\nrootfs-agent: signal 9\n")).isEmpty)
        #expect(stream.feed(lines("rootfs-agent: ready\nrootfs-agent: ready\nrootfs-agent: exit 7\n")) == [.ready, .final(.exited(7))])
    }

    @Test func statusNumbersOutOfRangeAreNoStatus() {
        for line in ["rootfs-agent: exit 256", "rootfs-agent: exit 4294967296", "rootfs-agent: exit -1", "rootfs-agent: exit 0255",
                     "rootfs-agent: exit ", "rootfs-agent: exit +3", "rootfs-agent: signal 0", "rootfs-agent: signal 65",
                     "rootfs-agent: exit 3 ", "x rootfs-agent: exit 0", "rootfs-agent: exit 0x", "rootfs-agent: exit ３"] {
            let parsed = AgentProtocol.parseStatus(line)
            // A trailing space is dropped like a carriage return; everything else must be refused.
            if line == "rootfs-agent: exit 3 " { #expect(parsed == .exited(3)) } else { #expect(parsed == nil, "\(line)") }
        }
        #expect(AgentProtocol.parseStatus("rootfs-agent: exit 255") == .exited(255))
        #expect(AgentProtocol.parseStatus("rootfs-agent: signal 64") == .signaled(64))
        var stream = StatusStream()
        _ = stream.feed(lines("rootfs-agent: ready\n"))
        #expect(stream.feed(lines("rootfs-agent: exit 256\n")).isEmpty)
        #expect(stream.final == nil)
    }

    @Test func aLineWithoutANewlineStaysBounded() {
        var stream = StatusStream()
        var tail = ConsoleTail(lineLimit: 20)
        let chunk = [UInt8](repeating: UInt8(ascii: "a"), count: 1 << 20)
        for _ in 0..<64 {  // 64 MiB without a newline
            _ = stream.feed(chunk)
            tail.feed(chunk)
        }
        #expect(stream.bufferedBytes <= AgentProtocol.maxStatusLine)
        #expect(tail.bufferedBytes <= tail.maxLineBytes)
        // The overlong line is dropped, not parsed; the next line counts.
        #expect(stream.feed(lines("rootfs-agent: ready\n")) == [])
        #expect(stream.feed(lines("rootfs-agent: ready\n")) == [.ready])
        tail.feed(lines("\nlast\n"))
        #expect(tail.tail.count == 2)
        #expect(tail.tail[0].utf8.count <= tail.maxLineBytes + 6 && tail.tail[0].hasSuffix("[cut]"))
        #expect(tail.tail[1] == "last")
    }

    @Test func aFloodOfShortLinesIsParsedInLinearTime() {
        // A million one-byte lines: a parser that re-scans or shifts its buffer per line needs hours.
        let flood = [UInt8](repeating: 0, count: 2 << 20).enumerated().map { $0.offset % 2 == 0 ? UInt8(ascii: "x") : 0x0a }
        let started = ContinuousClock.now
        var stream = StatusStream()
        var tail = ConsoleTail(lineLimit: 20)
        for start in stride(from: 0, to: flood.count, by: 1 << 16) {
            _ = stream.feed(flood[start..<min(flood.count, start + (1 << 16))])
            tail.feed(flood[start..<min(flood.count, start + (1 << 16))])
        }
        let elapsed = QEMUBoot.seconds(ContinuousClock.now - started)
        #expect(elapsed < 20, "\(elapsed) s")
        #expect(tail.tail.count == 20 && tail.lines.count < 40)
    }

    @Test func aPanicIsSeenOnlyOnTheConsole() {
        var tail = ConsoleTail(lineLimit: 3)
        tail.feed(lines("a\nb\nc\n[ 1.0] Kernel panic - not syncing: No working init found\nstack\n"))
        #expect(tail.panicked)
        #expect(tail.panicTail == ["b", "c", "[ 1.0] Kernel panic - not syncing: No working init found"])
    }

    @Test func theConsoleFileIsCutBackWhenAGuestFloodsIt() throws {
        let dir = try Fixtures.temporaryDirectory("console"); defer { FS.remove(dir) }
        let path = dir + "/console"
        let writer = try OwnedFileDescriptor(path: path, flags: O_WRONLY | O_CREAT | O_APPEND, mode: 0o600)
        let follower = FileFollower(path: path, truncateAbove: 1 << 20)
        let chunk = [UInt8](repeating: UInt8(ascii: "y"), count: 256 << 10)
        var read = 0
        for _ in 0..<64 {  // 16 MiB written in all
            try writer.writeAll(chunk)
            read += follower.read(limit: 1 << 20).count
        }
        #expect(read == 16 << 20)
        #expect(try writer.size() <= 2 << 20)
        try writer.writeAll(Array("tail\n".utf8))
        #expect(follower.read(limit: 1 << 20) == Array("tail\n".utf8))
    }

    @Test func aChattyStandardErrorDoesNotFailTheRun() async throws {
        // 3 MiB on stderr, more than any fixed limit a collector could have had.
        let command = ToolCommand("/bin/sh", ["-c", "head -c 3145728 /dev/zero | tr '\\0' x >&2; echo done"])
        let collected = Collected()
        let outcome = try await ProcessRunner().supervise(command, io: .pipes, onOutput: { collected.append($0) }) { _ in }
        #expect(outcome.exit == .exited(0))
        #expect(collected.text == "done\n")
        #expect(outcome.standardError.utf8.count == 64 << 10)
    }
}
