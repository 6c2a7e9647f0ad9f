import Foundation

/// `rootfs ls IMAGE [PATH]`: one line per entry of a directory inside an image, as `ls -l`
/// shows it (mode, owner, size, time, name, link target), names made printable by `displayPath`.
public enum ImageListing {
    /// The lines for `path`: a directory's entries (bytewise order), or the one entry a file is.
    /// PATH's links are followed inside the image; the entries listed are shown as they are.
    public static func lines(_ index: ImageIndex, path: [UInt8], image: String) throws -> [String] {
        let item = try index.require(path, image: image)
        var rows: [(TreeItem, [UInt8])] = []
        if item.fileType == 0o040000 {
            for name in index.children[item.path] ?? [] {
                let key = item.isRoot ? name : item.path + [UInt8(ascii: "/")] + name
                if let child = index.items[key] { rows.append((child, name)) }
            }
        } else {
            rows.append((item, ImageIndex.lastName(item.path)))
        }
        let sizes = rows.map { sizeColumn($0.0, index) }
        let owners = rows.map { "\($0.0.uid) \($0.0.gid)" }
        let sizeWidth = sizes.map(\.count).max() ?? 0
        let ownerWidth = owners.map(\.count).max() ?? 0
        return rows.enumerated().map { n, row in
            let (entry, name) = row
            var line = modeString(entry.mode) + " " + owners[n].padding(toLength: ownerWidth, withPad: " ", startingAt: 0)
                + " " + sizes[n].leftPadded(to: sizeWidth) + " " + timeString(entry.mtime) + " " + displayPath(name)
            if let target = entry.linkTarget { line += " -> " + displayPath(target) }
            return line
        }
    }

    static func sizeColumn(_ item: TreeItem, _ index: ImageIndex) -> String {
        switch item.fileType {
        case FileType.chr, FileType.blk:
            // Linux's dev_t: major in bits 8-19 and 32-43, minor in bits 0-7 and 20-31.
            let major = ((item.rdev >> 8) & 0xfff) | ((item.rdev >> 32) & ~0xfff)
            let minor = (item.rdev & 0xff) | ((item.rdev >> 12) & ~0xff)
            return "\(major), \(minor)"
        case FileType.reg: return String(index.contentSize(item))
        case 0o120000: return String(item.linkTarget?.count ?? 0)
        default: return "0"
        }
    }

    /// `-rwxr-xr-x`, with setuid, setgid and sticky bits as `ls` shows them.
    public static func modeString(_ mode: UInt32) -> String {
        let type: Character
        switch mode & 0o170000 {
        case 0o040000: type = "d"
        case 0o120000: type = "l"
        case FileType.chr: type = "c"
        case FileType.blk: type = "b"
        case FileType.ifo: type = "p"
        case FileType.sock: type = "s"
        default: type = "-"
        }
        var s = [type]
        let special: [(UInt32, Character, Character)] = [(0o4000, "s", "S"), (0o2000, "s", "S"), (0o1000, "t", "T")]
        for (n, shift) in [6, 3, 0].enumerated() {
            let bits = (mode >> UInt32(shift)) & 7
            s.append(bits & 4 != 0 ? "r" : "-")
            s.append(bits & 2 != 0 ? "w" : "-")
            let (flag, on, off) = special[n]
            let x = bits & 1 != 0
            if mode & flag != 0 { s.append(x ? on : off) } else { s.append(x ? "x" : "-") }
        }
        return String(s)
    }

    /// The time in UTC, `YYYY-MM-DD HH:MM`.
    static func timeString(_ seconds: Int) -> String {
        var t = time_t(seconds)
        var parts = tm()
        guard gmtime_r(&t, &parts) != nil else { return String(seconds) }
        func two(_ v: Int32) -> String { String(v).leftPadded(to: 2, with: "0") }
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday)) \(two(parts.tm_hour)):\(two(parts.tm_min))"
    }
}
