import Foundation

/// Building PowerShell that survives any value: literals, and command lines for cmd.exe.
public enum PowerShell {
    /// A single-quoted PowerShell string literal: nothing inside is expanded (`$`, backticks, double quotes stay as
    /// they are); a single quote is doubled, including the typographic ones PowerShell also treats as quotes.
    public static func quote(_ value: String) -> String {
        var quoted = "'"
        for character in value {
            switch character {
            case "'", "\u{2018}", "\u{2019}", "\u{201A}", "\u{201B}":
                quoted.append(character)
                quoted.append(character)
            default:
                quoted.append(character)
            }
        }
        return quoted + "'"
    }

    /// `-EncodedCommand`: the script as base64 of its UTF-16LE bytes, so no character needs cmd.exe quoting.
    public static func encoded(_ script: String) -> String {
        let bytes = script.utf16.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }
        return Data(bytes).base64EncodedString()
    }

    /// A cmd.exe command line that runs `script` in Windows PowerShell without profile or prompts, bypassing the
    /// execution policy.
    public static func commandLine(_ script: String) -> String {
        "powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand " + encoded(script)
    }

    /// The script a `commandLine` carries (for tests and the WinRM test server).
    public static func decode(commandLine: String) -> String? {
        guard let range = commandLine.range(of: "-EncodedCommand ") else { return nil }
        let encoded = commandLine[range.upperBound...].split(separator: " ").first.map(String.init) ?? ""
        guard let data = Data(base64Encoded: encoded), data.count % 2 == 0 else { return nil }
        let units = stride(from: 0, to: data.count, by: 2).map { UInt16(data[$0]) | UInt16(data[$0 + 1]) << 8 }
        return String(decoding: units, as: UTF16.self)
    }

    /// Prints `sha256:HEX` for a file, with .NET only (PowerShell 2 has no Get-FileHash).
    static func sha256Lines(pathVariable: String) -> String {
        """
        $stream = [IO.File]::OpenRead(\(pathVariable))
        try { $hash = [BitConverter]::ToString([Security.Cryptography.SHA256]::Create().ComputeHash($stream)) -replace '-','' } finally { $stream.Close() }
        [Console]::Out.WriteLine('sha256:' + $hash)
        """
    }

    /// Writes base64 lines arriving on stdin to `destination`, then prints its sha256.
    public static func receiveFileScript(destination: String) -> String {
        """
        $ErrorActionPreference = 'Stop'
        $dest = \(quote(destination))
        $out = [IO.File]::Create($dest)
        try {
          $in = [Console]::In
          while ($null -ne ($line = $in.ReadLine())) {
            if ($line.Length -eq 0) { continue }
            $bytes = [Convert]::FromBase64String($line)
            $out.Write($bytes, 0, $bytes.Length)
          }
        } finally { $out.Close() }
        \(sha256Lines(pathVariable: "$dest"))
        """
    }

    /// Downloads `url` to `destination` in the guest, then prints its sha256.
    public static func downloadFileScript(url: String, destination: String) -> String {
        """
        $ErrorActionPreference = 'Stop'
        $dest = \(quote(destination))
        (New-Object System.Net.WebClient).DownloadFile(\(quote(url)), $dest)
        \(sha256Lines(pathVariable: "$dest"))
        """
    }
}
