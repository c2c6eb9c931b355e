"""One router per area of the API and one for the HTML dashboard."""
