import AgentProtocol
import Foundation
import RootfsKit

/// The parsers rootfs runs on strangers' bytes, each as a fuzz harness. One
/// input is one file's bytes; a harness must return normally for every input
/// (a RootfsError is a normal answer) and never trap, hang or grow without
/// bound. Built two ways (docs/FUZZING.md):
/// - `swift build --sanitize=fuzzer --sanitize=address -Xswiftc -DFUZZING`:
///   libFuzzer drives `LLVMFuzzerTestOneInput`, the harness chosen by
///   `ROOTFS_FUZZ_TARGET`;
/// - a plain build: `rootfs-fuzz replay TARGET FILE...` runs saved inputs (the
///   corpus and every crash ever found) through the same harness, which is how
///   the test suite keeps each crash as a regression test.
enum Harness: String, CaseIterable {
    /// Any tree source read from a file: tar (plain, gzip, zstd, xz), cpio, ext4 (bare or partitioned).
    case tree
    /// `rootfs boot`'s image recognition: initrd, ISO, MBR/GPT/bare disks, VHD, qcow2, vmdk, and their partitions.
    case probe
    /// The agent's console protocol: status lines, commands, kernel command lines.
    case status

    /// Scratch file for harnesses that need a path (tree sources and the probe read files).
    static let scratch: String = {
        let dir = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        return "\(dir)/rootfs-fuzz-\(getpid())"
    }()

    func run(_ bytes: [UInt8]) {
        switch self {
        case .tree: Self.tree(bytes)
        case .probe: Self.probe(bytes)
        case .status: Self.status(bytes)
        }
    }

    static func writeScratch(_ bytes: [UInt8]) -> String {
        let path = scratch
        unlink(path)
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    static func tree(_ bytes: [UInt8]) {
        let path = writeScratch(bytes)
        defer { unlink(path) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 16)
        defer { buffer.deallocate() }
        do {
            let source = try TreeSource.open(path)
            // Content is read (bounded): a hostile size must not make a reader allocate it.
            try source.walk { item in
                var budget = 1 << 20
                try item.copyContent(buffer: buffer) { chunk in
                    budget -= chunk.count
                    if budget < 0 { throw RootfsError("fuzz: content budget spent") }
                }
            }
        } catch {}
    }

    static func probe(_ bytes: [UInt8]) {
        _ = BootImageKind.detect(head: Array(bytes.prefix(BootImageKind.headBytes)), tail: Array(bytes.suffix(512)))
    }

    static func status(_ bytes: [UInt8]) {
        let text = String(decoding: bytes, as: UTF8.self)
        for line in text.split(separator: "\n", omittingEmptySubsequences: false).prefix(4096) {
            _ = AgentProtocol.parseStatus(String(line))
            _ = AgentProtocol.parseKernelCommandLine(String(line))
            _ = AgentProtocol.decodeCommandBytes(String(line))
        }
    }
}

#if FUZZING
nonisolated(unsafe) var selected: Harness = .tree

@_cdecl("LLVMFuzzerInitialize")
public func fuzzerInitialize(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>) -> Int32 {
    let name = ProcessInfo.processInfo.environment["ROOTFS_FUZZ_TARGET"] ?? ""
    guard let harness = Harness(rawValue: name) else {
        FileHandle.standardError.write(Data("rootfs-fuzz: set ROOTFS_FUZZ_TARGET to one of \(Harness.allCases.map(\.rawValue).joined(separator: ", "))\n".utf8))
        exit(2)
    }
    selected = harness
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    selected.run(bytes)
    return 0
}
#else
@main
struct Replay {
    static func main() {
        let args = Array(CommandLine.arguments.dropFirst())
        guard args.count >= 2, args[0] == "replay", let harness = Harness(rawValue: args[1]) else {
            FileHandle.standardError.write(Data("usage: rootfs-fuzz replay \(Harness.allCases.map(\.rawValue).joined(separator: "|")) FILE|DIR...\n".utf8))
            exit(2)
        }
        var count = 0
        for path in args.dropFirst(2) {
            var files: [String] = [path]
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
                files = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { path + "/" + $0 }
            }
            for file in files {
                guard let data = FileManager.default.contents(atPath: file) else { continue }
                harness.run(Array(data))
                count += 1
            }
        }
        print("rootfs-fuzz: \(count) inputs replayed through \(harness.rawValue), none crashed")
    }
}
#endif
