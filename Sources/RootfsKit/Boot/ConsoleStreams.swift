import AgentProtocol
import Foundation
import Synchronization

/// The agent's status device (ttyS2 in batch runs, ttyS1 in interactive ones),
/// read as a byte stream. Only this device is believed: the console is shared
/// with the kernel and every guest daemon, so a line there that looks like a
/// status says nothing. The protocol is `ready` first, then one final status;
/// a status before `ready` and anything after the final status is ignored
/// (the first final status wins). Memory is bounded: a line longer than
/// `AgentProtocol.maxStatusLine` is dropped up to its newline, never kept.
struct StatusStream: Sendable {
    enum Event: Equatable, Sendable {
        case ready
        case final(AgentProtocol.Status)
    }

    private(set) var sawReady = false
    private(set) var final: AgentProtocol.Status?
    private var line: [UInt8] = []
    private var overlong = false

    /// Feeds bytes as they come; returns the events they complete, in order.
    /// Linear in the bytes fed: each byte is looked at once.
    mutating func feed<Bytes: Collection>(_ bytes: Bytes) -> [Event] where Bytes.Element == UInt8 {
        bytes.withContiguousStorageIfAvailable { feed(buffer: $0) } ?? feed(buffer: Array(bytes))
    }

    mutating func feed(buffer: [UInt8]) -> [Event] { buffer.withUnsafeBufferPointer { feed(buffer: $0) } }

    mutating func feed(buffer bytes: UnsafeBufferPointer<UInt8>) -> [Event] {
        var events: [Event] = []
        for byte in bytes {
            if final != nil { break }  // the protocol is over: nothing later counts
            if byte == 0x0a {
                if !overlong, let event = accept(line) { events.append(event) }
                line.removeAll(keepingCapacity: true)
                overlong = false
            } else if !overlong {
                if line.count < AgentProtocol.maxStatusLine { line.append(byte) } else { overlong = true; line.removeAll(keepingCapacity: true) }
            }
        }
        return events
    }

    /// Bytes of an unfinished line held (tests: it stays bounded).
    var bufferedBytes: Int { line.count }

    private mutating func accept(_ line: [UInt8]) -> Event? {
        guard let status = AgentProtocol.parseStatus(bytes: line) else { return nil }
        switch status {
        case .ready:
            if sawReady { return nil }  // the protocol promises one ready line; count the first
            sawReady = true
            return .ready
        case .exited, .signaled:
            guard sawReady else { return nil }  // a status before ready is not the command's
            final = status
            return .final(status)
        }
    }
}

/// The console's last lines, for error messages, and whether the kernel
/// panicked. Bounded whatever the guest writes: at most `lineLimit` lines of
/// at most `maxLineBytes` bytes each (a longer line is cut and the rest of it
/// up to its newline dropped). Linear: each byte is looked at once.
struct ConsoleTail: Sendable {
    static let panicMarker = Array("Kernel panic - not syncing".utf8)

    let lineLimit: Int
    let maxLineBytes: Int
    /// Finished lines as bytes (made printable only when asked for); at most twice the limit.
    private(set) var lines: [[UInt8]] = []
    private(set) var panicked = false
    private var panicLines: [[UInt8]] = []
    private var line: [UInt8] = []
    private var cut = false

    init(lineLimit: Int, maxLineBytes: Int = 512) {
        self.lineLimit = lineLimit
        self.maxLineBytes = maxLineBytes
    }

    mutating func feed<Bytes: Collection>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        if bytes.withContiguousStorageIfAvailable({ feed(buffer: $0) }) == nil {
            Array(bytes).withUnsafeBufferPointer { feed(buffer: $0) }
        }
    }

    mutating func feed(buffer bytes: UnsafeBufferPointer<UInt8>) {
        for byte in bytes {
            if byte == 0x0a {
                finishLine()
            } else if !cut {
                if line.count < maxLineBytes { line.append(byte) } else { cut = true }
            }
        }
    }

    private mutating func finishLine() {
        // A cut line is marked by a trailing 0x0a, which no kept line can hold.
        var finished = line
        if cut { finished.append(0x0a) }
        if !panicked && Self.contains(line, Self.panicMarker) {
            panicked = true
            panicLines = lines.suffix(lineLimit - 1) + [finished]
        }
        lines.append(finished)
        // Amortized: drop a batch once the array holds twice the limit.
        if lines.count >= 2 * lineLimit { lines.removeFirst(lines.count - lineLimit) }
        line.removeAll(keepingCapacity: true)
        cut = false
    }

    static func render(_ line: [UInt8]) -> String {
        line.last == 0x0a ? ConsoleWatcher.printable(line.dropLast()) + " [cut]" : ConsoleWatcher.printable(line[...])
    }

    /// The lines up to the kernel's panic message (they say more than its stack trace).
    var panicTail: [String] { panicLines.map(Self.render) }

    /// Bytes of an unfinished line held (tests: it stays bounded).
    var bufferedBytes: Int { line.count }

    /// The last `lineLimit` lines.
    var tail: [String] { lines.suffix(lineLimit).map(Self.render) }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard haystack.count >= needle.count else { return false }
        for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
            if haystack[start..<start + needle.count].elementsEqual(needle) { return true }
        }
        return false
    }
}

/// Follows a file QEMU appends to (opened with `append=on`), in bounded reads.
/// Once `truncateAbove` bytes have been read the file is cut back to empty,
/// so a guest flooding its console fills neither memory nor the disk; QEMU's
/// O_APPEND writes then continue at the new end. (What QEMU writes between the
/// last read and the cut is lost: only the console's tail is read this way.)
final class FileFollower: Sendable {
    private struct State { var fd: Int32 = -1; var offset: Int64 = 0 }
    private let state = Mutex(State())
    let path: String
    let truncateAbove: Int64?

    init(path: String, truncateAbove: Int64? = nil) {
        self.path = path
        self.truncateAbove = truncateAbove
    }

    deinit { state.withLock { if $0.fd >= 0 { close($0.fd) } } }

    /// Reads at most `limit` new bytes (nothing when the file is not there yet).
    func read(limit: Int) -> [UInt8] {
        state.withLock { state in
            if state.fd < 0 {
                // O_NOFOLLOW: the file is in our own 0700 directory, but never follow a link there.
                state.fd = open(path, (truncateAbove == nil ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOFOLLOW)
                if state.fd < 0 { return [] }
            }
            var buffer = [UInt8](repeating: 0, count: limit)
            let n = buffer.withUnsafeMutableBytes { pread(state.fd, $0.baseAddress!, limit, off_t(state.offset)) }
            guard n > 0 else { return [] }
            state.offset += Int64(n)
            buffer.removeLast(limit - n)
            if let truncateAbove, state.offset > truncateAbove, ftruncate(state.fd, 0) == 0 { state.offset = 0 }
            return buffer
        }
    }
}
