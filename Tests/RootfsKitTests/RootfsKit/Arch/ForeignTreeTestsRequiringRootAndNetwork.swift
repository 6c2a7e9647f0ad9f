import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// s390x and ppc64le Debian trees and initrds built on this host (mmdebstrap through
/// qemu-user). There is no reference agent for them (docs/AGENT.md), so these are
/// `--rootfs-only` builds; what is checked is that every program is the target's ELF.
/// Not booted: qemu-system-s390x and -ppc64 are not part of CI (docs/AGENT.md).
@Suite(.serialized, .requires(.root, .network, .foreignArch), .tags(.root, .network, .foreignArch))
struct ForeignTreeTestsRequiringRootAndNetwork {
    @Test(arguments: [Architecture.s390x, .ppc64le])
    func aDebianTreeAndInitrdOfTheArchitecture(_ architecture: Architecture) async throws {
        let work = try Fixtures.temporaryDirectory("tree-\(architecture.rawValue)")
        defer { FS.remove(work) }
        let initrd = work + "/debian.initrd"
        // bookworm: the mirror this project's machines use lacks some of trixie's current
        // s390x and ppc64el packages (404), while bookworm's are all there.
        let r = try await Fixtures.rootfs(["build", "debian", "--os-version", "bookworm", "--arch", architecture.rawValue, "--rootfs-only",
                                           "--initrd", initrd, "-r", work + "/rootfs"], workingDirectory: work)
        #expect(r.status == 0, "\(r.stderr)")
        // The initrd's programs, read back from the archive: all of them the target's.
        let reader = try ArchiveReader(path: initrd)
        var machines: [String: Int] = [:]
        while let (entry, _) = try reader.next() {
            guard entry.path.hasPrefix("usr/bin/"), entry.fileType == 0o100000 else { continue }
            let head = Array(try reader.readData(of: entry.path).prefix(20))
            guard let machine = ELF.machine(header: head) else { continue }  // scripts
            machines[ELF.machineName(machine), default: 0] += 1
        }
        #expect(machines.keys.sorted() == [architecture.rawValue], "\(machines)")
        #expect((machines[architecture.rawValue] ?? 0) > 50, "\(machines)")
    }
}
