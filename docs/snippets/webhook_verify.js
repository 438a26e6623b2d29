const crypto = require("crypto");

// Express: app.post("/hooks/dfscan", express.raw({ type: "application/json" }), (req, res) => ...)
// verify(secret, req.get("X-Dfscan-Signature") || "", req.body): true or false, never throws.
function verify(secret, header, rawBody, toleranceS = 300) {
  if (typeof secret !== "string" || secret.trim() === "") return false; // anyone can sign with ""
  if (typeof header !== "string" || !Buffer.isBuffer(rawBody)) return false;
  const stamps = [];
  const candidates = [];
  for (const part of header.split(",")) {
    const i = part.indexOf("=");
    const key = i < 0 ? part : part.slice(0, i);
    const value = i < 0 ? "" : part.slice(i + 1);
    if (key === "t") stamps.push(value);
    else if (key === "v1" && /^[0-9a-f]{64}$/.test(value)) candidates.push(Buffer.from(value, "hex"));
  }
  // ASCII digits only (no sign, spaces, "_" or other scripts' digits).
  if (stamps.length !== 1 || !/^[0-9]{1,12}$/.test(stamps[0])) return false;
  if (Math.abs(Date.now() / 1000 - Number(stamps[0])) > toleranceS) return false;
  const expected = crypto.createHmac("sha256", secret).update(`${stamps[0]}.`).update(rawBody).digest();
  return candidates.some((candidate) => crypto.timingSafeEqual(candidate, expected));
}

module.exports = { verify };
