// Shows what /api/health reports: the api's release version and its blue/green color.
(async () => {
  const text = (id, value) => { document.getElementById(id).textContent = value; };
  try {
    const response = await fetch('/api/health', { cache: 'no-store' });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const health = await response.json();
    text('status', 'up');
    text('version', health.version);
    text('color-name', health.color);
    document.getElementById('color').style.background = health.color;
  } catch (error) {
    text('status', `unreachable (${error.message})`);
  }
})();
