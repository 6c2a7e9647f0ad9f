// The wire protocol between `rootfs boot` (host) and `rootfs-agent` (guest).
// Pure Swift, no Foundation and no C library: the static agent links it as
// well as RootfsKit, so both sides share one encoder, one decoder and one set
// of names. docs/AGENT.md describes the protocol for other agents.

/// Names and encodings of the host/agent protocol.
public enum AgentProtocol {
    /// The line the agent prints once on the console when it is ready.
    public static let readyLine = "rootfs-agent: ready"
    /// `rootfs-agent: exit N`: the command exited with status N.
    public static let exitPrefix = "rootfs-agent: exit "
    /// `rootfs-agent: signal N`: the command was killed by signal N.
    public static let signalPrefix = "rootfs-agent: signal "

    /// Kernel parameter: the command, see `encodeCommand`.
    public static let commandParameter = "rootfs.cmd"
    /// Kernel parameter: the hostname (default "rootfs").
    public static let hostnameParameter = "rootfs.hostname"
    /// Kernel parameter: the device (e.g. `ttyS1`) that gets the command's
    /// stdout and stderr, in raw mode. Default: the console.
    public static let outputParameter = "rootfs.out"
    /// Kernel parameter: a terminal device (e.g. `ttyS0`) to run the command
    /// interactively on: stdin, stdout and stderr, as controlling terminal.
    public static let ttyParameter = "rootfs.tty"
    /// Kernel parameter: an extra device that receives a copy of the ready and
    /// status lines (for hosts that cannot read the console, e.g. interactive runs).
    public static let statusParameter = "rootfs.status"
    /// Kernel parameter: the TERM given to the command (default "linux").
    public static let termParameter = "rootfs.term"
    /// Kernel parameter: `user` asks the agent (as init) to configure QEMU's user-mode network:
    /// lo, and eth0 as `userNetworkAddress`/`userNetworkPrefix` with the default route via `userNetworkGateway`.
    public static let networkParameter = "rootfs.net"
    public static let userNetworkAddress = "10.0.2.15"
    public static let userNetworkPrefix: Int32 = 24
    public static let userNetworkGateway = "10.0.2.2"
    /// Kernel parameter: modules (comma-separated names, in load order) the agent loads first
    /// from `modulesDirectory/NAME.ko`, which `rootfs boot` adds to the initrd for its devices.
    public static let modulesParameter = "rootfs.modules"
    public static let modulesDirectory = "/.rootfs-boot/modules"
    /// A module name the agent accepts: letters, digits, `_` and `-` (no path).
    public static func isModuleName(_ name: Substring) -> Bool {
        !name.isEmpty && name.utf8.count <= 64 && name.utf8.allSatisfy {
            ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 95 || $0 == 45
        }
    }
    /// Kernel parameter: virtiofs shares to mount (PID 1 only), as tag and guest path pairs
    /// encoded as `encodeCommand` encodes arguments.
    public static let sharesParameter = "rootfs.shares"
    /// The default hostname.
    public static let defaultHostname = "rootfs"

    // MARK: Command encoding

    /// Encodes an argument vector for the kernel command line: every argument
    /// as UTF-8 followed by a NUL byte, the whole encoded as unpadded base64url
    /// (RFC 4648 section 5), so the value holds only `A-Z a-z 0-9 - _` and
    /// survives the kernel's parameter parsing whatever the arguments contain.
    /// Returns nil when an argument contains a NUL (it could not be an argv entry).
    public static func encodeCommand(_ arguments: [String]) -> String? {
        var bytes: [UInt8] = []
        for argument in arguments {
            let utf8 = Array(argument.utf8)
            if utf8.contains(0) { return nil }
            bytes += utf8
            bytes.append(0)
        }
        return base64URLEncode(bytes)
    }

    /// Decodes `encodeCommand`'s output into NUL-free byte strings, or nil when
    /// the value is not valid.
    public static func decodeCommandBytes(_ value: String) -> [[UInt8]]? {
        guard let bytes = base64URLDecode(value) else { return nil }
        if bytes.isEmpty { return [] }
        guard bytes.last == 0 else { return nil }
        var arguments: [[UInt8]] = []
        var current: [UInt8] = []
        for byte in bytes {
            if byte == 0 {
                arguments.append(current)
                current = []
            } else {
                current.append(byte)
            }
        }
        return arguments
    }

    /// Decodes `encodeCommand`'s output into strings.
    public static func decodeCommand(_ value: String) -> [String]? {
        decodeCommandBytes(value)?.map { String(decoding: $0, as: UTF8.self) }
    }

    // MARK: Status lines

    /// What a status line on the console says.
    public enum Status: Equatable, Sendable {
        case ready
        case exited(Int32)
        case signaled(Int32)

        /// The exit status a shell would report for it.
        public var shellStatus: Int32 {
            switch self {
            case .ready: return 0
            case .exited(let code): return code
            case .signaled(let signal): return 128 + signal
            }
        }
    }

    /// The status line for a status.
    public static func line(for status: Status) -> String {
        switch status {
        case .ready: return readyLine
        case .exited(let code): return exitPrefix + String(code)
        case .signaled(let signal): return signalPrefix + String(signal)
        }
    }

    /// The longest status line the agent writes (`rootfs-agent: signal 64`), with room.
    public static let maxStatusLine = 64
    /// The largest exit status a process can have (waitpid keeps 8 bits).
    public static let maxExitStatus: Int32 = 255
    /// The largest signal number Linux has (SIGRTMAX).
    public static let maxSignal: Int32 = 64

    /// Reads one line of the status device. The whole line must be a status
    /// line (trailing carriage returns and spaces aside): the device is the
    /// agent's own, so nothing else shares the line, and a marker in the middle
    /// of other text is not a status. Exit statuses outside 0...255 and signals
    /// outside 1...64 are not statuses either (`exit 256` must not become 0).
    public static func parseStatus(_ line: String) -> Status? {
        parseStatus(bytes: Array(line.utf8))
    }

    /// `parseStatus` on raw bytes (the device's, not necessarily UTF-8).
    public static func parseStatus<Bytes: Collection>(bytes line: Bytes) -> Status? where Bytes.Element == UInt8 {
        guard line.count <= maxStatusLine else { return nil }
        var text = Array(line)
        while let last = text.last, last == 0x0d || last == 0x0a || last == 0x20 { text.removeLast() }
        if text == Array(readyLine.utf8) { return .ready }
        for (prefix, make, range) in [(exitPrefix, Status.exited, Int32(0)...maxExitStatus),
                                      (signalPrefix, Status.signaled, Int32(1)...maxSignal)] {
            let head = Array(prefix.utf8)
            guard text.count > head.count, Array(text[..<head.count]) == head else { continue }
            let digits = text[head.count...]
            // At most three digits, no sign, no leading zero but "0" itself: one spelling per status.
            guard digits.count <= 3, digits.allSatisfy({ (0x30...0x39).contains($0) }),
                  digits.count == 1 || digits.first != 0x30 else { return nil }
            let value = digits.reduce(Int32(0)) { $0 * 10 + Int32($1 - 0x30) }
            return range.contains(value) ? make(value) : nil
        }
        return nil
    }

    // MARK: Kernel command line

    /// Splits a kernel command line into `(name, value)` pairs the way the
    /// kernel does: words separated by spaces, double quotes group spaces,
    /// a word without `=` has a nil value.
    public static func parseKernelCommandLine(_ line: String) -> [(name: String, value: String?)] {
        var words: [String] = []
        var current = ""
        var inQuotes = false
        var inWord = false
        for character in line {
            if character == "\"" {
                inQuotes.toggle()
                inWord = true
            } else if !inQuotes && (character == " " || character == "\n" || character == "\t") {
                if inWord { words.append(current) }
                current = ""
                inWord = false
            } else {
                current.append(character)
                inWord = true
            }
        }
        if inWord { words.append(current) }
        return words.map { word in
            if let equals = word.firstIndex(of: "=") {
                return (String(word[..<equals]), String(word[word.index(after: equals)...]))
            }
            return (word, nil)
        }
    }

    /// The last value of a parameter on a kernel command line (the kernel lets later ones win).
    public static func parameter(_ name: String, in line: String) -> String? {
        parseKernelCommandLine(line).last { $0.name == name }?.value
    }

    // MARK: base64url

    static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    /// Unpadded base64url.
    public static func base64URLEncode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count * 4 + 2) / 3)
        var index = 0
        while index + 3 <= bytes.count {
            let n = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8 | UInt32(bytes[index + 2])
            for shift in [18, 12, 6, 0] { out.append(alphabet[Int((n >> UInt32(shift)) & 63)]) }
            index += 3
        }
        let rest = bytes.count - index
        if rest == 1 {
            let n = UInt32(bytes[index]) << 16
            out.append(alphabet[Int((n >> 18) & 63)])
            out.append(alphabet[Int((n >> 12) & 63)])
        } else if rest == 2 {
            let n = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8
            out.append(alphabet[Int((n >> 18) & 63)])
            out.append(alphabet[Int((n >> 12) & 63)])
            out.append(alphabet[Int((n >> 6) & 63)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes unpadded (or padded) base64url; nil on any other character.
    public static func base64URLDecode(_ text: String) -> [UInt8]? {
        var values: [UInt32] = []
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): values.append(UInt32(byte - UInt8(ascii: "A")))
            case UInt8(ascii: "a")...UInt8(ascii: "z"): values.append(UInt32(byte - UInt8(ascii: "a")) + 26)
            case UInt8(ascii: "0")...UInt8(ascii: "9"): values.append(UInt32(byte - UInt8(ascii: "0")) + 52)
            case UInt8(ascii: "-"): values.append(62)
            case UInt8(ascii: "_"): values.append(63)
            case UInt8(ascii: "="): continue
            default: return nil
            }
        }
        if values.count % 4 == 1 { return nil }
        var out: [UInt8] = []
        var index = 0
        while index < values.count {
            let chunk = values[index..<min(index + 4, values.count)]
            var n: UInt32 = 0
            for (position, value) in chunk.enumerated() { n |= value << UInt32(18 - 6 * position) }
            out.append(UInt8((n >> 16) & 0xff))
            if chunk.count > 2 { out.append(UInt8((n >> 8) & 0xff)) }
            if chunk.count > 3 { out.append(UInt8(n & 0xff)) }
            index += 4
        }
        return out
    }
}
